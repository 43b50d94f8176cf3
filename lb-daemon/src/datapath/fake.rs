//! An in-memory data path for unit tests: what it was told to serve, and a switch to make its
//! next write fail.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use lb_common::Counter;

use super::{
    BackendEntry, CounterSource, Datapath, DatapathCounters, DatapathError, DatapathMode,
    FlowTable, ServiceEntry,
};
use crate::{
    config::{Scheduler, ServiceKey},
    flows::{Collector, FlowListing, FlowQuery, FlowRecord},
    maglev::Member,
    model::FlowCounts,
    xdp::XdpError,
};

/// A service as the fake serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeService {
    /// Service id.
    pub id: u32,
    /// Scheduler.
    pub scheduler: Scheduler,
    /// Backends in rotation.
    pub members: Vec<Member>,
    /// The Maglev table, backend ids.
    pub table: Vec<u32>,
}

/// What the fake holds; shared with the test through [`FakeDatapath::state`].
#[derive(Debug, Default)]
pub struct FakeState {
    /// Backend entries by id.
    pub backends: HashMap<u32, BackendEntry>,
    /// Services served.
    pub services: HashMap<ServiceKey, FakeService>,
    /// Tables that differed from the one served before.
    pub tables_written: usize,
    /// Backend ids freed, in order.
    pub freed: Vec<u32>,
    /// Counters per backend id, as the data path would count.
    pub counters: HashMap<u32, Counter>,
    /// What a scan of the flow table finds.
    pub flows: FlowCounts,
    /// What a listing of the flow table finds (`lbctl flows`).
    pub listed: Vec<FlowRecord>,
    /// Backend ids whose flows scans were asked to cut.
    pub cut: Vec<u32>,
    /// The flood guard's rate last set.
    pub flood_guard: Option<u32>,
    /// Writes left before the next one fails (None: never).
    pub fail_after: Option<usize>,
}

/// The fake data path.
#[derive(Debug, Clone)]
pub struct FakeDatapath {
    /// The mode it pretends to be.
    pub mode: DatapathMode,
    /// What it holds (shared by its clones: the test keeps one, the core another).
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeDatapath {
    /// An empty fake in `mode`.
    pub fn new(mode: DatapathMode) -> FakeDatapath {
        FakeDatapath {
            mode,
            state: Arc::default(),
        }
    }

    /// What it holds now.
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> Result<std::sync::MutexGuard<'_, FakeState>, DatapathError> {
        let mut st = self.state();
        match st.fail_after {
            Some(0) => Err(DatapathError::Xdp(XdpError::Map(
                "FAKE",
                "refused (test)".into(),
            ))),
            Some(n) => {
                st.fail_after = Some(n - 1);
                Ok(st)
            }
            None => Ok(st),
        }
    }
}

impl Datapath for FakeDatapath {
    fn mode(&self) -> DatapathMode {
        self.mode
    }

    fn set_backend(&mut self, id: u32, b: &BackendEntry) -> Result<(), DatapathError> {
        self.write()?.backends.insert(id, *b);
        Ok(())
    }

    fn set_service(&mut self, s: &ServiceEntry<'_>) -> Result<(), DatapathError> {
        let mut st = self.write()?;
        let new = FakeService {
            id: s.id,
            scheduler: s.scheduler,
            members: s.members.to_vec(),
            table: s.table.to_vec(),
        };
        if st.services.get(&s.key).map(|o| &o.table) != Some(&new.table) {
            st.tables_written += 1;
        }
        st.services.insert(s.key, new);
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        self.write()?.services.remove(key);
        Ok(())
    }

    fn free_backend(&mut self, id: u32) -> Result<Counter, DatapathError> {
        let mut st = self.write()?;
        st.backends.remove(&id);
        st.freed.push(id);
        Ok(st.counters.remove(&id).unwrap_or_default())
    }

    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        let mut c = DatapathCounters::zero();
        c.backends = self.state().counters.clone();
        Ok(c)
    }

    fn flow_table(&mut self) -> Result<Box<dyn FlowTable>, DatapathError> {
        Ok(Box::new(self.clone()))
    }

    fn set_flood_guard(&mut self, new_flows_per_sec: u32) -> Result<(), DatapathError> {
        self.state().flood_guard = Some(new_flows_per_sec);
        Ok(())
    }

    fn counter_source(&self) -> Result<Arc<dyn CounterSource>, DatapathError> {
        Ok(Arc::new(self.clone()))
    }

    fn stop(self: Box<Self>, _: std::time::Duration) {}
}

impl CounterSource for FakeDatapath {
    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        Datapath::counters(self)
    }
}

impl FlowTable for FakeDatapath {
    fn list(&mut self, query: &FlowQuery) -> FlowListing {
        let mut c = Collector::new(query);
        for f in &self.state().listed {
            c.offer(*f);
        }
        c.finish()
    }

    fn scan(&mut self, is_dead: &dyn Fn(u32) -> bool) -> FlowCounts {
        let mut st = self.state();
        let mut counts = st.flows.clone();
        let dead: Vec<u32> = counts
            .active
            .keys()
            .chain(counts.closing.keys())
            .copied()
            .filter(|&id| is_dead(id))
            .collect();
        for id in dead {
            let n =
                counts.active.remove(&id).unwrap_or(0) + counts.closing.remove(&id).unwrap_or(0);
            counts.entries -= n;
            counts.expired += n;
            st.cut.push(id);
        }
        st.flows = FlowCounts {
            expired: 0,
            ..counts.clone()
        };
        counts
    }
}
