// The kernel emulator's runtime: the kernel registry and the block scheduler (see emu.h).
#include <cstdint>
#include "emu.h"
#include <map>
#include <string>
#include <vector>
#include <cstdio>
#include <cstdlib>

uint3 threadIdx, blockIdx, blockDim, gridDim;

static std::map<std::string, EmuThunk>& registry() {
    static std::map<std::string, EmuThunk> r;
    return r;
}
int emu_register(const char* name, EmuThunk thunk) {
    registry()[name] = thunk;
    return 0;
}

enum State { Runnable, AtBarrier, Done, Trapped };

// Fibers switch by saving the callee-saved registers on their own stack and swapping stack pointers:
// no system call per switch (ucontext's swapcontext makes one, and that dominated run time).
#if !defined(__x86_64__)
#error "the metagrad kernel emulator's fiber switch is written for x86-64"
#endif
extern "C" void emu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch, .-emu_switch
)");

static const size_t kStack = 128 * 1024;
static std::vector<void*> fiber_sp;
static std::vector<State> state;
static std::vector<char> stacks;
static void* scheduler_sp;
static int current;
static EmuThunk run_thunk;
static void** run_args;

void __syncthreads() {
    state[current] = AtBarrier;
    emu_switch(&fiber_sp[current], scheduler_sp);
}
void __trap() {
    state[current] = Trapped;
    emu_switch(&fiber_sp[current], scheduler_sp);
    abort();  // never resumed
}
static void fiber_main() {
    run_thunk(run_args);
    state[current] = Done;
    emu_switch(&fiber_sp[current], scheduler_sp);
    abort();  // never resumed: each block starts its fibers afresh
}
// A fresh fiber on stack t whose first switch-in enters fiber_main with the ABI's stack alignment.
static void start_fiber(unsigned t) {
    uintptr_t top = (uintptr_t)&stacks[(t + 1) * kStack] & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;                    // fiber_main's (unused) return address slot
    *--sp = (void*)&fiber_main;         // popped by emu_switch's ret
    for (int r = 0; r < 6; r++) *--sp = nullptr;  // r15, r14, r13, r12, rbx, rbp
    fiber_sp[t] = sp;
    state[t] = Runnable;
}

// Runs kernel `name` on a gx·gy·gz grid of bx·by·bz blocks with `args` laid out as for cuLaunchKernel.
// Returns 0, or 1 with a message in err.
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, void** args, char* err, size_t errlen) {
    auto it = registry().find(name);
    if (it == registry().end()) {
        snprintf(err, errlen, "no kernel named %s", name);
        return 1;
    }
    const unsigned threads = bx * by * bz;
    if (threads == 0 || threads > 1024) {
        snprintf(err, errlen, "%s: block of %u threads (1..=1024 allowed)", name, threads);
        return 1;
    }
    fiber_sp.resize(threads);
    state.resize(threads);
    if (stacks.size() < threads * kStack) stacks.resize(threads * kStack);
    run_thunk = it->second;
    run_args = args;
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) {
                blockIdx = {x, y, z};
                for (unsigned t = 0; t < threads; t++) start_fiber(t);
                for (;;) {
                    for (unsigned t = 0; t < threads; t++) {
                        if (state[t] != Runnable) continue;
                        current = (int)t;
                        threadIdx = {t % bx, t / bx % by, t / (bx * by)};
                        emu_switch(&scheduler_sp, fiber_sp[t]);
                    }
                    unsigned done = 0, barrier = 0, trapped = 0;
                    for (unsigned t = 0; t < threads; t++) {
                        done += state[t] == Done;
                        barrier += state[t] == AtBarrier;
                        trapped += state[t] == Trapped;
                    }
                    if (trapped) {
                        snprintf(err, errlen, "%s: __trap() in block (%u,%u,%u)", name, x, y, z);
                        return 1;
                    }
                    if (done == threads) break;
                    if (done) {
                        snprintf(err, errlen, "%s: __syncthreads() reached by %u of %u threads in block (%u,%u,%u)", name,
                                 barrier, threads, x, y, z);
                        return 1;
                    }
                    for (unsigned t = 0; t < threads; t++) state[t] = Runnable;
                }
            }
    return 0;
}
