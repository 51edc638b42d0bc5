//! The workers' metrics board: one shared memory page set that the master maps before it forks,
//! with a slot per worker. Each worker writes its own `/metrics` text into its slot once a
//! second; any worker answering `/metrics` reads every slot and serves them all, each series
//! labelled with its worker (see [`crate::metrics::merge_workers`]). So a scrape of the shared
//! port, whichever worker the kernel hands it to, sees every worker.
//!
//! Each slot is a sequence lock: the writer makes the sequence odd, writes, makes it even; a
//! reader copies and retries if the sequence moved. Bytes are read and written as relaxed
//! atomics, so a torn read is detected, never undefined.
//!
//! Owns: the mapping. May not touch: anything else (the loop decides when to write and read).
use std::{
    io,
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering},
};

/// Bytes per worker slot (a rendered `/metrics` is about 6 KiB).
pub const SLOT_BYTES: usize = 64 * 1024;
/// The slot's header: sequence (8) and length (4), padded to 16.
const HEADER: usize = 16;

/// The shared mapping. Cloned into every worker by `fork`; unmapped when the process exits.
#[derive(Debug)]
pub struct Board {
    base: NonNull<u8>,
    slots: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics.
unsafe impl Send for Board {}

impl Board {
    /// Maps `slots` slots of shared, anonymous memory (before forking the workers).
    pub fn new(slots: usize) -> io::Result<Board> {
        let len = slots.max(1) * SLOT_BYTES;
        // SAFETY: an anonymous shared mapping with no file; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Board { base, slots: slots.max(1) })
    }

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.slots
    }

    /// Whether the board has no slot (never: at least one is mapped).
    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }

    fn seq(&self, slot: usize) -> &AtomicU64 {
        // SAFETY: in bounds (slot < slots, checked by callers), 16-byte aligned (page aligned
        // base, 64 KiB slots), and only ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(slot * SLOT_BYTES).cast::<AtomicU64>() }
    }

    fn len_of(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: as in `seq`, 8 bytes further.
        unsafe { &*self.base.as_ptr().add(slot * SLOT_BYTES + 8).cast::<AtomicU32>() }
    }

    fn bytes(&self, slot: usize) -> &[AtomicU8] {
        // SAFETY: as in `seq`: the data part of the slot, accessed only atomically.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(slot * SLOT_BYTES + HEADER).cast::<AtomicU8>(),
                SLOT_BYTES - HEADER,
            )
        }
    }

    /// Writes `text` into `slot` (one writer per slot: its worker). A text too long for a slot
    /// is cut at its last whole line that fits.
    pub fn write(&self, slot: usize, text: &str) {
        if slot >= self.slots {
            return;
        }
        let room = SLOT_BYTES - HEADER;
        let text = if text.len() <= room {
            text
        } else {
            let cut = text[..room].rfind('\n').map_or(0, |i| i + 1);
            &text[..cut]
        };
        let seq = self.seq(slot);
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (dst, &b) in self.bytes(slot).iter().zip(text.as_bytes()) {
            dst.store(b, Ordering::Relaxed);
        }
        self.len_of(slot).store(text.len() as u32, Ordering::Relaxed);
        fence(Ordering::Release);
        seq.store((s | 1).wrapping_add(1), Ordering::Release);
    }

    /// Reads `slot`: `None` if it was never written or kept changing while read.
    pub fn read(&self, slot: usize) -> Option<String> {
        if slot >= self.slots {
            return None;
        }
        for _ in 0..8 {
            let before = self.seq(slot).load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let len = (self.len_of(slot).load(Ordering::Relaxed) as usize).min(SLOT_BYTES - HEADER);
            let bytes: Vec<u8> =
                self.bytes(slot)[..len].iter().map(|b| b.load(Ordering::Relaxed)).collect();
            fence(Ordering::Acquire);
            if self.seq(slot).load(Ordering::Relaxed) == before {
                return if before == 0 { None } else { String::from_utf8(bytes).ok() };
            }
        }
        None
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of that length, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.slots * SLOT_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_are_shared_across_fork() {
        let board = Board::new(2).unwrap();
        assert_eq!(board.read(0), None);
        board.write(0, "a 1\n");
        board.write(1, "b 2\n");
        assert_eq!(board.read(0).as_deref(), Some("a 1\n"));
        assert_eq!(board.read(1).as_deref(), Some("b 2\n"));
        assert_eq!(board.read(2), None);
        // SAFETY: fork in a test process; the child only writes to the board and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            board.write(1, "from the child\n");
            // SAFETY: leave the child at once, running no destructor or test harness code.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(board.read(1).as_deref(), Some("from the child\n"));
    }

    #[test]
    fn a_text_too_long_is_cut_at_a_line() {
        let board = Board::new(1).unwrap();
        let line = "x".repeat(99) + "\n";
        let text = line.repeat(1000);
        board.write(0, &text);
        let got = board.read(0).unwrap();
        assert!(got.len() <= SLOT_BYTES - HEADER && got.ends_with('\n') && !got.is_empty());
    }
}
