//! The checkpoint arena: one allocation, a fixed number of state slots.
//!
//! REPLAY keeps at most a few (O(k·log_k T)) optimizer states alive at once. The arena is sized once from
//! the schedule's slot count and the state's layout, and never grows or frees memory during the
//! traversal: storing a state copies its bytes into a slot, loading copies them out. Slot indices come
//! from the schedule, which reuses them LIFO. States on a CUDA device are kept in one device buffer
//! (device-to-device copies, never through the host); states on the CPU in one host buffer. Asking for a slot past the end is an
//! [`Error::OutOfMemory`], never a panic. Counters report the peak number of occupied slots, the bytes
//! held and the copies made.

use crate::backend::Block;
use crate::error::{Error, Result};
use crate::{DType, Device, Shape, Tensor};

/// Counters of an [`Arena`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Slots allocated.
    pub slots: usize,
    /// Bytes per slot (each tensor padded to 8 bytes).
    pub slot_bytes: usize,
    /// Bytes allocated in total (`slots · slot_bytes`).
    pub total_bytes: usize,
    /// Most slots occupied at once.
    pub peak_slots: usize,
    /// States copied in.
    pub stores: u64,
    /// States copied out.
    pub loads: u64,
    /// Bytes copied in and out.
    pub bytes_copied: u64,
}

/// A fixed pool of state slots in one allocation, on the device of the states it holds.
pub struct Arena {
    layout: Vec<(Shape, DType, usize)>, // shape, dtype, byte offset within a slot
    slot_bytes: usize,
    buf: Block,
    occupied: Vec<Option<usize>>, // the step each slot holds
    stats: ArenaStats,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("device", &self.buf.device()).field("stats", &self.stats).field("occupied", &self.occupied).finish()
    }
}

fn describe(state: &[Tensor]) -> String {
    state.iter().map(|t| format!("{} {}", t.shape(), t.dtype())).collect::<Vec<_>>().join(", ")
}

impl Arena {
    /// An arena of `slots` slots, each holding a state laid out like `like` (shapes and dtypes), on
    /// the device of `like` (which must all share one).
    pub fn new(slots: usize, like: &[Tensor]) -> Result<Arena> {
        let device = like.first().map_or(Device::Cpu, Tensor::device);
        if let Some(t) = like.iter().find(|t| t.device() != device) {
            return Err(Error::device("Arena::new", format!("state tensors live on {device} and {}", t.device())));
        }
        let oom = |msg: String| Error::OutOfMemory { op: "Arena::new", msg };
        let mut layout = Vec::new();
        layout.try_reserve_exact(like.len()).map_err(|_| oom(format!("a layout of {} tensors", like.len())))?;
        let mut off = 0usize;
        for t in like {
            layout.push((t.shape().clone(), t.dtype(), off));
            off = t
                .size_in_bytes()
                .div_ceil(8)
                .checked_mul(8)
                .and_then(|b| off.checked_add(b))
                .ok_or_else(|| oom("a state larger than usize".into()))?;
        }
        let total = off.checked_mul(slots).ok_or_else(|| oom(format!("{slots} slots of {off} bytes overflow the address space")))?;
        let mut occupied = Vec::new();
        occupied.try_reserve_exact(slots).map_err(|_| oom(format!("a table of {slots} slots")))?;
        occupied.resize(slots, None);
        let buf = Block::new("Arena::new", device, total)
            .map_err(|e| oom(format!("cannot allocate {slots} slots of {off} bytes ({total} bytes) on {device}: {e}")))?;
        let stats = ArenaStats { slots, slot_bytes: off, total_bytes: off * slots, ..Default::default() };
        Ok(Arena { layout, slot_bytes: off, buf, occupied, stats })
    }

    /// The counters so far.
    pub fn stats(&self) -> ArenaStats {
        self.stats
    }

    fn slot_range(&self, op: &'static str, slot: usize) -> Result<std::ops::Range<usize>> {
        if slot >= self.occupied.len() {
            return Err(Error::OutOfMemory { op, msg: format!("slot {slot} requested but the arena has {} slots", self.occupied.len()) });
        }
        Ok(slot * self.slot_bytes..(slot + 1) * self.slot_bytes)
    }

    /// What slot `slot` holds (the step of its state, if any), to read or change.
    fn entry(&mut self, op: &'static str, slot: usize) -> Result<&mut Option<usize>> {
        let slots = self.occupied.len();
        self.occupied
            .get_mut(slot)
            .ok_or_else(|| Error::OutOfMemory { op, msg: format!("slot {slot} requested but the arena has {slots} slots") })
    }

    /// Copies `state` (which is s_step) into the empty slot `slot`.
    pub fn store(&mut self, slot: usize, step: usize, state: &[Tensor]) -> Result<()> {
        let range = self.slot_range("Arena::store", slot)?;
        if let Some(held) = *self.entry("Arena::store", slot)? {
            return Err(Error::Invalid { op: "Arena::store", msg: format!("slot {slot} still holds s_{held}; free it first") });
        }
        let fits =
            state.len() == self.layout.len() && state.iter().zip(&self.layout).all(|(t, (s, d, _))| t.shape() == s && t.dtype() == *d);
        if !fits {
            let want: Vec<String> = self.layout.iter().map(|(s, d, _)| format!("{s} {d}")).collect();
            return Err(Error::Shape {
                op: "Arena::store",
                msg: format!("state s_{step} is [{}] but the arena holds [{}]", describe(state), want.join(", ")),
            });
        }
        let device = self.buf.device();
        for (t, (_, _, off)) in state.iter().zip(&self.layout) {
            self.buf.write("Arena::store", range.start + off, t.to_device(device)?.storage())?;
            self.stats.bytes_copied += t.size_in_bytes() as u64;
        }
        *self.entry("Arena::store", slot)? = Some(step);
        self.stats.stores += 1;
        self.stats.peak_slots = self.stats.peak_slots.max(self.occupied.iter().filter(|o| o.is_some()).count());
        Ok(())
    }

    /// Copies slot `slot` out as a state (new tensors); the slot keeps its copy.
    pub fn load(&mut self, slot: usize) -> Result<Vec<Tensor>> {
        let range = self.slot_range("Arena::load", slot)?;
        if self.entry("Arena::load", slot)?.is_none() {
            return Err(Error::Invalid { op: "Arena::load", msg: format!("slot {slot} is empty") });
        }
        let mut out = Vec::with_capacity(self.layout.len());
        for (shape, dtype, off) in &self.layout {
            let n = shape.numel();
            out.push(Tensor::new("Arena::load", self.buf.read("Arena::load", range.start + off, *dtype, n)?, shape.clone())?);
            self.stats.bytes_copied += (n * dtype.size_in_bytes()) as u64;
        }
        self.stats.loads += 1;
        Ok(out)
    }

    /// Marks slot `slot` empty (its memory stays in the arena).
    pub fn free(&mut self, slot: usize) -> Result<()> {
        if self.entry("Arena::free", slot)?.take().is_none() {
            return Err(Error::Invalid { op: "Arena::free", msg: format!("slot {slot} is already empty") });
        }
        Ok(())
    }

    /// The step whose state slot `slot` holds, if any.
    pub fn holds(&self, slot: usize) -> Option<usize> {
        self.occupied.get(slot).copied().flatten()
    }
}
