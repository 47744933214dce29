// The kernel emulator's runtime: the kernel registry and the block scheduler (see emu.h).
#include "emu.h"
#include <map>
#include <string>
#include <vector>
#include <cstdio>
#include <ucontext.h>

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
static const size_t kStack = 128 * 1024;
static std::vector<ucontext_t> fibers;
static std::vector<State> state;
static std::vector<char> stacks;
static ucontext_t scheduler;
static int current;
static EmuThunk run_thunk;
static void** run_args;

void __syncthreads() {
    state[current] = AtBarrier;
    swapcontext(&fibers[current], &scheduler);
}
void __trap() {
    state[current] = Trapped;
    swapcontext(&fibers[current], &scheduler);
    for (;;) {}  // never resumed
}
static void fiber_main() {
    run_thunk(run_args);
    state[current] = Done;  // returns to `scheduler` through uc_link
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
    fibers.resize(threads);
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
                for (unsigned t = 0; t < threads; t++) {
                    getcontext(&fibers[t]);
                    fibers[t].uc_stack.ss_sp = &stacks[t * kStack];
                    fibers[t].uc_stack.ss_size = kStack;
                    fibers[t].uc_link = &scheduler;
                    makecontext(&fibers[t], fiber_main, 0);
                    state[t] = Runnable;
                }
                for (;;) {
                    for (unsigned t = 0; t < threads; t++) {
                        if (state[t] != Runnable) continue;
                        current = (int)t;
                        threadIdx = {t % bx, t / bx % by, t / (bx * by)};
                        swapcontext(&scheduler, &fibers[t]);
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
