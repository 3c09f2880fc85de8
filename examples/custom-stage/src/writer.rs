//! The writer thread: the only place that touches the capture file.
//!
//! A stage runs on the packet path, where a blocked `write` (a slow disk, a full page
//! cache, NFS) would stall the whole tunnel. So the stage only *copies* a packet into a
//! bounded queue, which never blocks: when the queue is full, the packet is not
//! captured (and counted), but it still passes. A thread of our own drains the queue
//! into a buffered file and flushes whenever the queue runs empty, so the file is
//! complete up to the last quiet moment (a capture can be read while the tunnel runs).
//!
//! Why a thread and not [`Stage::background`](lametun_core::Stage::background)? The
//! driver drops background futures at shutdown without a last poll, so the final
//! records could be lost; a thread is joined when the stage is dropped, after the
//! queue is drained and the file flushed. File IO on an async runtime would use a
//! thread pool anyway.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use crate::format::{self, Record};

/// When the capture stops by itself (the tunnel goes on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Records to write at most.
    pub(crate) packets: Option<u64>,
    /// File size in bytes at most, headers included.
    pub(crate) bytes: Option<u64>,
}

/// Counters shared by the stage (which bumps `queue_full`) and the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) packets_written: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    /// Set once the writer wrote its last record (a limit, an error): the stage then
    /// stops copying packets.
    pub(crate) stopped: AtomicBool,
}

/// The sending half: lives in the stage, used from every worker thread.
#[derive(Debug)]
pub(crate) struct Writer {
    // `Option` only so that `drop` can close the queue before joining the thread.
    tx: Option<SyncSender<Record>>,
    thread: Option<JoinHandle<()>>,
    pub(crate) stats: Arc<Stats>,
}

impl Writer {
    /// Writes the file header to `out` (so that a capture with no packet is a valid,
    /// empty pcap file, and an unwritable file is a start-up error), then starts the
    /// thread that writes what [`offer`](Self::offer) queues.
    ///
    /// `gate`, in tests, holds the thread back until a message arrives on it, so that
    /// the queue can be filled deterministically.
    pub(crate) fn start<W: Write + Send + 'static>(
        out: W,
        name: PathBuf,
        snaplen: u32,
        limits: Limits,
        queue: usize,
        gate: Option<Receiver<()>>,
    ) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(64 << 10, out);
        out.write_all(&format::file_header(snaplen))?;
        out.flush()?;
        let stats = Arc::new(Stats::default());
        stats
            .bytes_written
            .store(format::FILE_HEADER_LEN as u64, Ordering::Relaxed);
        let (tx, rx) = sync_channel(queue);
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("pcap-writer".into())
            .spawn(move || {
                if let Some(gate) = gate {
                    let _ = gate.recv();
                }
                drain(rx, out, &thread_stats, limits, &name);
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues a record for the file, without ever blocking. Called on the packet path.
    pub(crate) fn offer(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            }
            // The writer stopped (a limit, an error); `stopped` is set already.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for Writer {
    /// Closes the queue and waits for the thread to write what is left and flush.
    /// Runs when the tunnel's pipeline is dropped at shutdown.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread's loop: write what comes, flush when the queue is empty, stop at a
/// limit or at the first write error.
fn drain<W: Write>(
    rx: Receiver<Record>,
    mut out: BufWriter<W>,
    stats: &Stats,
    limits: Limits,
    name: &std::path::Path,
) {
    let mut packets = 0u64;
    let mut bytes = format::FILE_HEADER_LEN as u64;
    let result = (|| -> io::Result<()> {
        // Blocks until a record arrives or every sender is gone (the stage was dropped).
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(record) = next {
                let size = record.file_len() as u64;
                // A record that would not fit ends the capture (a smaller one might,
                // but a capture with holes in it would mislead).
                let fits = limits.bytes.is_none_or(|max| bytes + size <= max);
                if fits {
                    out.write_all(&format::record_header(
                        record.ts,
                        record.data.len() as u32,
                        record.orig_len,
                    ))?;
                    out.write_all(&record.data)?;
                    packets += 1;
                    bytes += size;
                    stats.packets_written.store(packets, Ordering::Relaxed);
                    stats.bytes_written.store(bytes, Ordering::Relaxed);
                }
                if !fits || limits.packets.is_some_and(|max| packets >= max) {
                    tracing::info!(
                        packets,
                        bytes,
                        "pcap: {}: limit reached, capture stopped (the tunnel goes on)",
                        name.display()
                    );
                    return out.flush();
                }
                next = rx.try_recv().ok();
            }
            // The queue is empty: a good moment to hand the bytes to the kernel, so that
            // a reader of the file sees every packet up to now.
            out.flush()?;
        }
        out.flush()
    })();
    if let Err(e) = result {
        stats.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "pcap: {}: write failed, capture stopped (the tunnel goes on): {e}",
            name.display()
        );
    }
    stats.stopped.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A `Write` into memory that the test can read while the writer owns it.
    #[derive(Clone, Default)]
    struct Memory(Arc<Mutex<Vec<u8>>>);

    impl Write for Memory {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record(n: u8) -> Record {
        Record {
            ts: Duration::from_secs(u64::from(n)),
            orig_len: 3,
            data: vec![0x45, n, n],
        }
    }

    fn start(mem: &Memory, limits: Limits, queue: usize, gate: Option<Receiver<()>>) -> Writer {
        Writer::start(mem.clone(), "mem".into(), 100, limits, queue, gate).unwrap()
    }

    #[test]
    fn a_full_queue_counts_instead_of_blocking_and_the_rest_is_written_on_drop() {
        let mem = Memory::default();
        let (open, gate) = sync_channel(1);
        let w = start(&mem, Limits::default(), 2, Some(gate));
        for n in 0..5 {
            w.offer(record(n));
        }
        assert_eq!(w.stats.queue_full.load(Ordering::Relaxed), 3);
        open.send(()).unwrap();
        drop(w);
        let c = format::parse(&mem.0.lock().unwrap()).unwrap();
        let got: Vec<u8> = c.records.iter().map(|r| r.data[1]).collect();
        assert_eq!(got, [0, 1]);
    }

    #[test]
    fn the_packet_limit_stops_the_capture_exactly() {
        let mem = Memory::default();
        let (open, gate) = sync_channel(1);
        let limits = Limits {
            packets: Some(3),
            bytes: None,
        };
        let w = start(&mem, limits, 10, Some(gate));
        for n in 0..6 {
            w.offer(record(n));
        }
        open.send(()).unwrap();
        let stats = w.stats.clone();
        drop(w);
        assert!(stats.stopped.load(Ordering::Relaxed));
        assert_eq!(stats.packets_written.load(Ordering::Relaxed), 3);
        assert_eq!(
            format::parse(&mem.0.lock().unwrap()).unwrap().records.len(),
            3
        );
    }

    #[test]
    fn the_size_limit_is_never_exceeded() {
        let mem = Memory::default();
        // Header 24 + two records of 16 + 3 = 62; a third would make 81.
        let limits = Limits {
            packets: None,
            bytes: Some(80),
        };
        let w = start(&mem, limits, 10, None);
        for n in 0..3 {
            w.offer(record(n));
        }
        drop(w);
        let len = mem.0.lock().unwrap().len();
        assert_eq!(len, 62);
    }

    #[test]
    fn a_write_error_stops_the_capture_and_is_counted() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // The header goes into the BufWriter and fails at the first flush: start-up.
        assert!(Writer::start(Broken, "broken".into(), 100, Limits::default(), 4, None).is_err());

        /// Takes the file header, then fails (the disk filled up).
        struct FillsUp(usize);
        impl Write for FillsUp {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::Error::other("no space left on device"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let w = Writer::start(FillsUp(24), "full".into(), 100, Limits::default(), 4, None).unwrap();
        w.offer(record(1));
        let stats = w.stats.clone();
        drop(w);
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 1);
        assert!(stats.stopped.load(Ordering::Relaxed));
    }
}
