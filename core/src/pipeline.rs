//! [`Pipeline`]: the ordered chain of stages, and its accounting.
//!
//! Outbound packets visit the stages top to bottom, inbound packets bottom to top, the
//! way tower's `ServiceBuilder` layers wrap a service: the first stage listed is the
//! outermost layer of the *inner* packet and the last one is closest to the wire.
//! Every stage has its own counters of passes and drops by reason, per direction, so
//! "which step dropped my packet" always has an answer.

use std::time::Instant;

use crate::counters::{PassDropCounters, PassDropSnapshot};
use crate::stage::{BackgroundTask, Direction, DropReason, Metric, Overhead, PacketMeta, Stage};
use crate::{PacketBuf, Verdict};

/// A packet that a stage dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// Position of the stage in the chain (0 = first listed), `None` for the core.
    pub stage: Option<usize>,
    /// The stage's `type` name, or `"core"`.
    pub stage_type: &'static str,
    /// Why.
    pub reason: DropReason,
}

struct Slot {
    type_name: &'static str,
    label: String,
    stage: Box<dyn Stage>,
    overhead: Overhead,
    grows_inbound: bool,
    outbound: PassDropCounters,
    inbound: PassDropCounters,
}

/// An ordered chain of stages. Empty means passthrough.
#[derive(Default)]
pub struct Pipeline {
    slots: Vec<Slot>,
    overhead: Overhead,
    grows_inbound: bool,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.slots.iter().map(|s| &s.label))
            .finish()
    }
}

impl Pipeline {
    /// An empty (passthrough) pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a stage at the wire end of the chain. `label` names it in logs and
    /// counters (the config uses `type` or `type#index`).
    pub fn push(
        &mut self,
        type_name: &'static str,
        label: impl Into<String>,
        stage: Box<dyn Stage>,
    ) {
        let overhead = stage.overhead();
        self.overhead = self.overhead + overhead;
        let grows_inbound = stage.grows_inbound();
        self.grows_inbound |= grows_inbound;
        self.slots.push(Slot {
            type_name,
            label: label.into(),
            stage,
            overhead,
            grows_inbound,
            outbound: PassDropCounters::default(),
            inbound: PassDropCounters::default(),
        });
    }

    /// Number of stages.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True for the passthrough chain.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sum of the stages' declared overheads.
    pub fn overhead(&self) -> Overhead {
        self.overhead
    }

    /// Whether a stage may make an inbound packet longer than its datagram (see
    /// [`Stage::grows_inbound`]); false for the passthrough chain.
    pub fn grows_inbound(&self) -> bool {
        self.grows_inbound
    }

    /// Runs `pkt` through the stages top to bottom.
    #[inline]
    pub fn outbound(&self, pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Result<(), Dropped> {
        for (i, slot) in self.slots.iter().enumerate() {
            let before = (pkt.start(), pkt.end());
            match slot.stage.outbound(pkt, meta) {
                Verdict::Pass => {
                    debug_assert!(
                        before.0.saturating_sub(pkt.start()) <= slot.overhead.head
                            && pkt.end().saturating_sub(before.1) <= slot.overhead.tail,
                        "stage {} ({}) grew a packet beyond its declared overhead {:?}",
                        i,
                        slot.label,
                        slot.overhead
                    );
                    slot.outbound.pass();
                }
                Verdict::Drop(reason) => {
                    slot.outbound.drop_for(reason);
                    return Err(Dropped {
                        stage: Some(i),
                        stage_type: slot.type_name,
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs `pkt` through the stages bottom to top.
    #[inline]
    pub fn inbound(&self, pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Result<(), Dropped> {
        for (i, slot) in self.slots.iter().enumerate().rev() {
            let end = pkt.end();
            let verdict = slot.stage.inbound(pkt, meta);
            debug_assert!(
                slot.grows_inbound || pkt.end() <= end,
                "stage {} moved the end of an inbound packet {} bytes further, but its \
                 grows_inbound() is false",
                slot.label,
                pkt.end().saturating_sub(end)
            );
            match verdict {
                Verdict::Pass => slot.inbound.pass(),
                Verdict::Drop(reason) => {
                    slot.inbound.drop_for(reason);
                    return Err(Dropped {
                        stage: Some(i),
                        stage_type: slot.type_name,
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    /// Gives every stage the time (about once a second).
    pub fn on_tick(&self, now: Instant) {
        for slot in &self.slots {
            slot.stage.on_tick(now);
        }
    }

    /// The futures stages want run beside the tunnel (see [`Stage::background`]).
    pub fn background_tasks(&self) -> Vec<(String, BackgroundTask)> {
        self.slots
            .iter()
            .filter_map(|s| s.stage.background().map(|t| (s.label.clone(), t)))
            .collect()
    }

    /// What each stage is, for `check-config` and logs.
    pub fn describe(&self) -> Vec<StageDescription> {
        self.slots
            .iter()
            .map(|s| StageDescription {
                type_name: s.type_name,
                label: s.label.clone(),
                overhead: s.overhead,
                details: s.stage.describe(),
            })
            .collect()
    }

    /// Counters and stage metrics now.
    pub fn snapshot(&self) -> Vec<StageSnapshot> {
        self.slots
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let mut metrics = Vec::new();
                s.stage.metrics(&mut metrics);
                StageSnapshot {
                    index,
                    type_name: s.type_name,
                    label: s.label.clone(),
                    outbound: s.outbound.snapshot(),
                    inbound: s.inbound.snapshot(),
                    metrics,
                }
            })
            .collect()
    }

    /// Counters of one stage in one direction (tests and tools).
    pub fn counters(&self, stage: usize, direction: Direction) -> Option<PassDropSnapshot> {
        self.slots.get(stage).map(|s| match direction {
            Direction::Outbound => s.outbound.snapshot(),
            Direction::Inbound => s.inbound.snapshot(),
        })
    }
}

/// One stage as `check-config` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageDescription {
    /// The registered `type`.
    pub type_name: &'static str,
    /// The label used in logs and counters.
    pub label: String,
    /// What it declared.
    pub overhead: Overhead,
    /// The stage's own one-line description (never secrets).
    pub details: String,
}

/// One stage's counters and metrics at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSnapshot {
    /// Position in the chain.
    pub index: usize,
    /// The registered `type`.
    pub type_name: &'static str,
    /// The label used in logs and counters.
    pub label: String,
    /// Outbound passes and drops.
    pub outbound: PassDropSnapshot,
    /// Inbound passes and drops.
    pub inbound: PassDropSnapshot,
    /// The stage's own metrics ([`Stage::metrics`]).
    pub metrics: Vec<Metric>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Appends its tag on the way out and checks/strips it on the way in, recording the
    /// order in which stages ran.
    struct Tag {
        tag: u8,
        log: std::sync::Arc<Mutex<Vec<String>>>,
    }

    impl Stage for Tag {
        fn overhead(&self) -> Overhead {
            Overhead::new(0, 1)
        }
        fn outbound(&self, pkt: &mut PacketBuf<'_>, _: &PacketMeta) -> Verdict {
            self.log.lock().unwrap().push(format!("out{}", self.tag));
            pkt.append(1)[0] = self.tag;
            Verdict::Pass
        }
        fn inbound(&self, pkt: &mut PacketBuf<'_>, _: &PacketMeta) -> Verdict {
            self.log.lock().unwrap().push(format!("in{}", self.tag));
            match pkt.strip_back(1) {
                Some(t) if t[0] == self.tag => Verdict::Pass,
                Some(_) => Verdict::Drop(DropReason::BadTag),
                None => Verdict::Drop(DropReason::TooShort),
            }
        }
    }

    fn meta() -> PacketMeta {
        PacketMeta::new(Instant::now(), None)
    }

    fn chain(log: &std::sync::Arc<Mutex<Vec<String>>>) -> Pipeline {
        let mut p = Pipeline::new();
        for tag in 1..=3 {
            p.push(
                "tag",
                format!("tag#{tag}"),
                Box::new(Tag {
                    tag,
                    log: log.clone(),
                }),
            );
        }
        p
    }

    #[test]
    fn outbound_runs_top_to_bottom_and_inbound_bottom_to_top() {
        let log = std::sync::Arc::default();
        let p = chain(&log);
        assert_eq!(p.overhead(), Overhead::new(0, 3));
        let mut storage = [0u8; 16];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, b"ip");
        p.outbound(&mut pkt, &meta()).unwrap();
        assert_eq!(pkt.as_slice(), b"ip\x01\x02\x03");
        p.inbound(&mut pkt, &meta()).unwrap();
        assert_eq!(pkt.as_slice(), b"ip");
        assert_eq!(
            *log.lock().unwrap(),
            ["out1", "out2", "out3", "in3", "in2", "in1"]
        );
    }

    #[test]
    fn counts_passes_and_names_the_dropping_stage() {
        let log = std::sync::Arc::default();
        let p = chain(&log);
        let mut storage = [0u8; 16];
        // The wire end (stage 2, tag 3) sees the wrong trailer first and drops.
        let mut pkt = PacketBuf::with_data(&mut storage, 0, b"ip\x01\x02\x09");
        let dropped = p.inbound(&mut pkt, &meta()).unwrap_err();
        assert_eq!(
            dropped,
            Dropped {
                stage: Some(2),
                stage_type: "tag",
                reason: DropReason::BadTag
            }
        );
        let mut pkt = PacketBuf::with_data(&mut storage, 0, b"ip");
        p.outbound(&mut pkt, &meta()).unwrap();
        let snap = p.snapshot();
        assert_eq!(snap[2].inbound.dropped_for("bad_tag"), 1);
        assert_eq!(snap[2].inbound.passed, 0);
        assert!(snap.iter().all(|s| s.outbound.passed == 1));
        assert_eq!(p.counters(0, Direction::Inbound).unwrap().passed, 0);
    }

    #[test]
    fn one_stage_that_may_grow_inbound_packets_makes_the_chain_copy_them() {
        assert!(!Pipeline::new().grows_inbound());
        let mut p = Pipeline::new();
        p.push(
            "passthrough",
            "passthrough",
            Box::new(crate::stages::passthrough::Passthrough),
        );
        assert!(!p.grows_inbound());
        // `Tag` keeps the default: it may.
        p.push(
            "tag",
            "tag",
            Box::new(Tag {
                tag: 1,
                log: std::sync::Arc::default(),
            }),
        );
        assert!(p.grows_inbound());
    }

    #[test]
    fn empty_pipeline_passes_everything_untouched() {
        let p = Pipeline::new();
        let mut storage = [0u8; 8];
        let mut pkt = PacketBuf::with_data(&mut storage, 2, b"abc");
        p.outbound(&mut pkt, &meta()).unwrap();
        p.inbound(&mut pkt, &meta()).unwrap();
        assert_eq!(pkt.as_slice(), b"abc");
        assert_eq!(p.overhead(), Overhead::NONE);
    }
}
