//! Loads: watching how programs read model files, and running the load plan of a file once
//! its readers show they are loading it (doc/SEMANTICS.md, "Cold start"; doc/DESIGN.md,
//! "Load plans").
//!
//! For each file a process has open, this module keeps what it knows of the file's layout
//! (parsed from the header bytes in the store, off the FUSE threads) and the tensor data its
//! reads have covered ([`Walk`]). When the reads have walked the data, the file's plan runs:
//! its chunks are fetched in the loader's order through the read-ahead permits, so inside
//! `--max-connections` and the read-ahead memory bound, with demand reads first. A shard of a
//! sharded checkpoint (a safetensors shard its index lists, a split GGUF's file) then starts
//! the next shard, one shard ahead of the loader. A plan stops issuing requests when none of
//! the files it serves is open any more; what it fetched that no read asked for is counted
//! then, in `modelfs_plan_unread_bytes_total`.
//!
//! A header that does not parse is a debug line and no plan: a reader never sees an error
//! from here, and the generic read-ahead in `fetch.rs` serves it as any other file.

use crate::lock;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::runtime::Handle;

use crate::fetch::{ChunkFetcher, FetchError, FileRef};
use crate::formats::{self, FormatError, Layout};
use crate::fs::pages::{Pusher, Stored};
use crate::fs::snapshot::Snapshot;
use crate::manifest::ContentId;
use crate::plan::{LoadPlan, PlanFormat, Walk};
use crate::store::{chunk_len, ChunkStore};

mod checkpoint;
use checkpoint::Checkpoint;

/// An ONNX model file is parsed for its external data references only up to this size: one
/// that names external data holds the graph alone (kilobytes to a few MiB); a larger one
/// carries its weights inside and names nothing.
const MAX_ONNX_MODEL: u64 = 64 << 20;

/// ONNX model files looked at for one data file: a directory of exported variants has a
/// handful; a bound keeps a pathological repo from costing a parse of each.
const MAX_ONNX_CANDIDATES: usize = 16;

/// Where a file is: its snapshot (for its siblings, the checkpoint index and ONNX models next
/// to it) and its index in the snapshot's manifest.
#[derive(Clone)]
pub struct Place {
    pub(crate) snap: Arc<Snapshot>,
    pub(crate) index: usize,
}

impl Place {
    fn file(&self) -> Option<FileRef> {
        self.snap.file_ref(self.index)
    }

    fn path(&self) -> &str {
        self.snap.file(self.index).map_or("", |f| f.path.as_str())
    }

    /// The file at `path` in the same snapshot.
    fn sibling(&self, path: &str) -> Option<Place> {
        let files = &self.snap.manifest.files;
        let index = files.binary_search_by(|f| f.path.as_str().cmp(path)).ok()?;
        Some(Place { snap: self.snap.clone(), index })
    }
}

/// What kind of plan a file may have, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Safetensors,
    Gguf,
    /// Data an ONNX model next to it (or above it) may name.
    MaybeOnnxData,
}

impl Kind {
    fn of(place: &Place) -> Option<Kind> {
        let path = place.path();
        if path.ends_with(".safetensors") {
            return Some(Kind::Safetensors);
        }
        if path.ends_with(".gguf") {
            return Some(Kind::Gguf);
        }
        if path.ends_with(".onnx") || path.ends_with(".json") {
            return None;
        }
        let dir = parent(path);
        let has_model = place.snap.manifest.files.iter().any(|f| {
            f.path.ends_with(".onnx") && f.size <= MAX_ONNX_MODEL && is_within(dir, parent(&f.path))
        });
        has_model.then_some(Kind::MaybeOnnxData)
    }

    /// The format of a file whose plan comes from its own header (ONNX data has none: its
    /// plan comes from the model that names it).
    fn header_format(self) -> Option<Format> {
        match self {
            Kind::Safetensors => Some(Format::Safetensors),
            Kind::Gguf => Some(Format::Gguf),
            Kind::MaybeOnnxData => None,
        }
    }
}

#[derive(Debug)]
enum Stage {
    /// The header is not all stored yet; last tried with this many leading bytes stored.
    Unparsed { had: u64 },
    /// ONNX data whose plan the next read looks for (a loader reads the model first).
    Unlooked,
    /// A parse is running on a blocking thread.
    Parsing,
    /// No plan: not a file a plan knows, a malformed header, or nothing names this data.
    None,
    /// `started`: the plan has run (or runs). `chained`: the next shard has been started (or
    /// there is none to start).
    Planned { plan: Arc<LoadPlan>, started: bool, chained: bool },
}

/// What a read sets going, once the loads lock is released.
enum Next {
    /// Parse the file's plan (for the load with this id).
    Parse(u64),
    /// Run its plan.
    Run(Arc<LoadPlan>),
    /// Plan the shard after it.
    Chain,
}

struct FileLoad {
    stage: Stage,
    walk: Walk,
    file: FileRef,
    /// Chunks this file's plan stored, not yet counted as read or unread.
    fetched: HashSet<u64>,
    /// Chunks its plan stored while no handle of the file was open (a next shard, planned
    /// before the loader opened it): the kernel had no inode to push them to then. They are
    /// handed to the pusher at the file's next read, in the loader's order.
    backlog: Vec<u64>,
    /// The files whose being open keeps this file's plan going: itself, or every shard of
    /// its checkpoint.
    keepalive: Arc<[ContentId]>,
    /// A plan task for it is running.
    running: bool,
    /// Which load of the file this is: a parse started for an earlier one (closed and
    /// opened again meanwhile) must not touch this one.
    id: u64,
}

impl FileLoad {
    fn new(stage: Stage, file: FileRef, keepalive: Arc<[ContentId]>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        FileLoad {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            stage,
            walk: Walk::default(),
            file,
            fetched: HashSet::new(),
            backlog: Vec::new(),
            keepalive,
            running: false,
        }
    }
}

#[derive(Default)]
struct Inner {
    files: HashMap<ContentId, FileLoad>,
    /// Handles open per content in this process.
    open: HashMap<ContentId, usize>,
}

impl Inner {
    fn alive(&self, keepalive: &[ContentId]) -> bool {
        keepalive.iter().any(|c| self.open.get(c).is_some_and(|&n| n > 0))
    }
}

pub struct Loads {
    enabled: AtomicBool,
    fetcher: Arc<ChunkFetcher>,
    store: Arc<dyn ChunkStore>,
    runtime: Option<Handle>,
    inner: Mutex<Inner>,
    /// Where each chunk a plan stored goes next: the kernel's page cache, on a mount whose
    /// kernel takes pushes (`fs::pages`).
    pusher: OnceLock<Pusher>,
}

impl Loads {
    pub fn new(fetcher: Arc<ChunkFetcher>, runtime: Option<Handle>, enabled: bool) -> Arc<Self> {
        let store = fetcher.store().clone();
        Arc::new(Self {
            enabled: AtomicBool::new(enabled),
            fetcher,
            store,
            runtime,
            inner: Mutex::default(),
            pusher: OnceLock::new(),
        })
    }

    /// Push every chunk a plan stores into the kernel's page cache (once; later calls are
    /// ignored).
    pub fn set_pusher(&self, pusher: Pusher) {
        let _ = self.pusher.set(pusher);
    }

    /// Chunk `index` of `content` is in the kernel's page cache: the loader's faults read it
    /// there and never tell this process, so it counts as delivered, not as unread.
    pub fn pushed(&self, content: &ContentId, index: u64) {
        if let Some(load) = lock(&self.inner).files.get_mut(content) {
            load.fetched.remove(&index);
        }
    }

    /// Turn plans on or off (config `load_plans`, reloadable); plans running go on.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    pub fn opened(&self, content: &ContentId) {
        *lock(&self.inner).open.entry(*content).or_default() += 1;
    }

    fn active(&self) -> bool {
        self.enabled.load(Ordering::Relaxed) && self.runtime.is_some()
    }

    /// Where a file first seen at a read starts: a safetensors or GGUF file waits for its
    /// header to be stored; ONNX data has its plan looked for at once, from the model.
    fn first_stage(kind: Option<Kind>) -> Stage {
        match kind {
            Some(Kind::Safetensors | Kind::Gguf) => Stage::Unparsed { had: 0 },
            Some(Kind::MaybeOnnxData) => Stage::Unlooked,
            None => Stage::None,
        }
    }

    /// A handle on `content` closed. When that ends a load (none of the files a plan serves is
    /// open), the plan's unread chunks are counted and what was kept of the files is dropped.
    pub fn released(&self, content: &ContentId) {
        let mut inner = lock(&self.inner);
        match inner.open.get_mut(content) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                inner.open.remove(content);
            }
            None => return,
        }
        let ended: Vec<ContentId> = inner
            .files
            .iter()
            .filter(|(_, load)| !load.running && !inner.alive(&load.keepalive))
            .map(|(c, _)| *c)
            .collect();
        for c in ended {
            if let Some(load) = inner.files.remove(&c) {
                count_unread(&load, self.store.chunk_size());
            }
        }
    }

    /// A read of `len` bytes at `offset` of the file at `place` was answered.
    pub fn after_read(self: &Arc<Self>, place: &Place, file: &FileRef, offset: u64, len: u64) {
        if !self.active() {
            return;
        }
        let content = file.content();
        let cs = self.store.chunk_size();
        let read = offset..offset.saturating_add(len);
        let mut inner = lock(&self.inner);
        let load = inner.files.entry(content).or_insert_with(|| {
            FileLoad::new(Self::first_stage(Kind::of(place)), file.clone(), Arc::from([content]))
        });
        if !load.backlog.is_empty() {
            if let Some(pusher) = self.pusher.get() {
                let size = file.remote.size;
                let chunks = take_backlog(load, read.clone(), cs);
                pusher.offer_backlog(
                    chunks.into_iter().map(|index| Stored { content, size, index }).collect(),
                );
            }
        }
        let next = match &mut load.stage {
            Stage::None => return,
            // Counted toward the trigger once the plan is known (`Walk::planned`).
            Stage::Parsing => {
                load.walk.on_early_read(read);
                return;
            }
            Stage::Unlooked => {
                // Its plan comes from the model, which a loader has read by now: looked for
                // this once.
                load.walk.on_early_read(read);
                load.stage = Stage::Parsing;
                Next::Parse(load.id)
            }
            Stage::Unparsed { had } => {
                load.walk.on_early_read(read);
                // Parse again only once more of the header is stored than last time.
                if !self.store.has_chunk(&content, *had / cs).unwrap_or(false) {
                    return;
                }
                load.stage = Stage::Parsing;
                Next::Parse(load.id)
            }
            Stage::Planned { plan, started, chained } => {
                if !load.walk.on_read(plan, read) {
                    return;
                }
                if !*started {
                    (*started, *chained, load.running) = (true, true, true);
                    Next::Run(plan.clone())
                } else if !*chained {
                    (*chained, load.running) = (true, true);
                    Next::Chain
                } else {
                    return;
                }
            }
        };
        // Tasks are started with the lock released: they take it themselves.
        drop(inner);
        match next {
            Next::Parse(id) => self.spawn_parse(place.clone(), id),
            Next::Run(plan) => {
                self.spawn_run(place.clone(), plan, "its readers walked the tensor data")
            }
            // Started one shard ahead; now that the loader is here, one more ahead.
            Next::Chain => self.spawn_next_shard(place.clone()),
        }
    }

    /// Where read-ahead after a read at `offset` must stop while the file's plan waits for its
    /// trigger: the end of the header or tensor the read is in. Until the program reads on
    /// into other tensors, a reader of one tensor (a peek) pays for that tensor only; once it
    /// does, the plan fetches ahead in the loader's order instead.
    pub fn read_ahead_end(&self, content: &ContentId, offset: u64) -> Option<u64> {
        let inner = lock(&self.inner);
        match &inner.files.get(content)?.stage {
            Stage::Planned { plan, started: false, .. } => Some(plan.end_of_part(offset)),
            _ => None,
        }
    }

    fn spawn_parse(self: &Arc<Self>, place: Place, id: u64) {
        let Some(rt) = &self.runtime else { return };
        let this = self.clone();
        rt.spawn_blocking(move || {
            let Some(file) = place.file() else { return };
            let content = file.content();
            let outcome = this.plan_from_store(&place, &file);
            let mut inner = lock(&this.inner);
            let Some(load) = inner.files.get_mut(&content) else { return };
            // Started for an earlier load of the file, or overtaken by `next_shard`, which
            // plans a shard itself.
            if load.id != id || load.running || !matches!(load.stage, Stage::Parsing) {
                return;
            }
            let mut start = None;
            load.stage = match outcome {
                Parsed::Plan(plan) => {
                    let plan = Arc::new(plan);
                    // Reads answered while the header was stored and parsed count too.
                    let walked = load.walk.planned(&plan);
                    tracing::debug!(
                        path = %file.remote.path,
                        format = plan.format.as_str(),
                        tensors = plan.len(),
                        bytes = plan.bytes(),
                        walked,
                        "load plan ready; it starts when the tensor data is walked"
                    );
                    let walked = walked && this.active();
                    if walked {
                        load.running = true;
                        start = Some(plan.clone());
                    }
                    Stage::Planned { plan, started: walked, chained: walked }
                }
                Parsed::Later(had) => Stage::Unparsed { had },
                Parsed::Never(why) => {
                    tracing::debug!(path = %file.remote.path, why = %why, "no load plan");
                    Stage::None
                }
            };
            drop(inner);
            if let Some(plan) = start {
                this.spawn_run(
                    place,
                    plan,
                    "its readers walked the tensor data while it was parsed",
                );
            }
        });
    }

    /// The plan of `file` from the bytes the store holds, without fetching anything.
    fn plan_from_store(&self, place: &Place, file: &FileRef) -> Parsed {
        let Some(kind) = Kind::of(place) else { return Parsed::Never(NoPlan::NotAModelFile) };
        match kind.header_format() {
            Some(format) => self.header_from_store(file, format),
            None => self.onnx_plan(place, file),
        }
    }

    /// Parse the header of `file` from its stored leading chunks.
    fn header_from_store(&self, file: &FileRef, format: Format) -> Parsed {
        let content = file.content();
        let (cs, size) = (self.store.chunk_size(), file.remote.size);
        let mut prefix = Vec::new();
        let mut index = 0;
        loop {
            match format.parse(&prefix, size) {
                Ok(layout) => return Parsed::Plan(format.plan(&layout, size)),
                Err(FormatError::NeedMore(n)) if n > format.max_header() => {
                    return Parsed::Never(NoPlan::HeaderTooLong(n))
                }
                Err(FormatError::NeedMore(n)) => {
                    while (prefix.len() as u64) < n {
                        let len = chunk_len(size, cs, index) as usize;
                        match self.store.read_chunk(&content, index, 0..len, &mut prefix) {
                            Ok(true) => index += 1,
                            Ok(false) | Err(_) => return Parsed::Later(prefix.len() as u64),
                        }
                    }
                }
                Err(e) => return Parsed::Never(NoPlan::Header(e)),
            }
        }
    }

    /// The plan of an ONNX external data file: the ranges the first stored ONNX model above it
    /// that names it refers to.
    fn onnx_plan(&self, place: &Place, file: &FileRef) -> Parsed {
        let path = place.path();
        let candidates = place
            .snap
            .manifest
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                f.path.ends_with(".onnx")
                    && f.size <= MAX_ONNX_MODEL
                    && is_within(parent(path), parent(&f.path))
            })
            .take(MAX_ONNX_CANDIDATES);
        for (index, entry) in candidates {
            let Some(model) = place.snap.file_ref(index) else { continue };
            let Some(bytes) = self.whole_from_store(&model) else { continue };
            let refs = match formats::onnx::external_refs(&bytes) {
                Ok(refs) => refs,
                Err(e) => {
                    tracing::debug!(path = %entry.path, error = %e, "ONNX model not read");
                    continue;
                }
            };
            let dir = parent(&entry.path);
            let location = if dir.is_empty() { path } else { &path[dir.len() + 1..] };
            let regions = formats::onnx::regions_in(&refs, location, file.remote.size);
            if !regions.is_empty() {
                return Parsed::Plan(LoadPlan::onnx_data(&regions, file.remote.size));
            }
        }
        // ONNX Runtime reads the model before its data; a model not stored by then is not
        // being loaded through this mount.
        Parsed::Never(NoPlan::NoOnnxModel)
    }

    /// All of `file` from the store, if every chunk of it is there.
    fn whole_from_store(&self, file: &FileRef) -> Option<Vec<u8>> {
        let (cs, size, content) = (self.store.chunk_size(), file.remote.size, file.content());
        let mut out = Vec::with_capacity(size as usize);
        for index in 0..crate::store::chunk_count(size, cs) {
            let len = chunk_len(size, cs, index) as usize;
            if !self.store.read_chunk(&content, index, 0..len, &mut out).ok()? {
                return None;
            }
        }
        Some(out)
    }

    fn spawn_run(self: &Arc<Self>, place: Place, plan: Arc<LoadPlan>, why: &'static str) {
        let Some(rt) = &self.runtime else { return };
        let this = self.clone();
        rt.spawn(async move {
            let Some(file) = place.file() else { return };
            // ONNX external data is one file; the other formats come in shards. Looked up
            // once: the keep-alive and the next shard both come from it.
            let checkpoint = match plan.format {
                PlanFormat::OnnxData => None,
                _ => this.checkpoint_of(&place).await,
            };
            if let Some(checkpoint) = &checkpoint {
                this.keep_alive_with(&place, checkpoint);
            }
            let requests = this.run_plan(&file, &plan, why).await;
            match &checkpoint {
                // Every request of this shard is issued: the next shard's header fetch and
                // plan start now, and its requests queue behind this one's last (permits are
                // taken in order), so the connections this shard's tail frees go to the next
                // shard instead of waiting idle for the tail to finish.
                Some(checkpoint) => {
                    tokio::join!(requests.finished(), this.next_shard(&place, checkpoint));
                }
                None => requests.finished().await,
            }
            this.finished(&file.content());
        });
    }

    fn spawn_next_shard(self: &Arc<Self>, place: Place) {
        let Some(rt) = &self.runtime else { return };
        let this = self.clone();
        rt.spawn(async move {
            if let Some(checkpoint) = this.checkpoint_of(&place).await {
                this.next_shard(&place, &checkpoint).await;
            }
            if let Some(file) = place.file() {
                this.finished(&file.content());
            }
        });
    }

    /// Issue every request of `file`'s `plan`; what is still on the wire is returned.
    async fn run_plan(
        self: &Arc<Self>,
        file: &FileRef,
        plan: &LoadPlan,
        why: &str,
    ) -> crate::fetch::InFlight {
        let chunks = plan.chunks(self.store.chunk_size());
        crate::metrics::get().plan_started(plan.format);
        tracing::debug!(
            path = %file.remote.path,
            format = plan.format.as_str(),
            tensors = plan.len(),
            chunks = chunks.len(),
            why,
            "load plan started"
        );
        let content = file.content();
        let (this, recorder, size) = (self.clone(), self.clone(), file.remote.size);
        self.fetcher
            .fetch_in_order(
                file,
                &chunks,
                move || {
                    let inner = lock(&this.inner);
                    inner.files.get(&content).is_some_and(|load| inner.alive(&load.keepalive))
                },
                move |index, bytes| {
                    crate::metrics::get().plan_fetched(bytes);
                    let pusher = recorder.pusher.get();
                    let mut inner = lock(&recorder.inner);
                    let open = inner.open.get(&content).is_some_and(|&n| n > 0);
                    if let Some(load) = inner.files.get_mut(&content) {
                        load.fetched.insert(index);
                        // No handle open, so no inode a push could reach: the file's first
                        // read hands it over.
                        if !open && pusher.is_some() {
                            load.backlog.push(index);
                            return;
                        }
                    }
                    drop(inner);
                    // After the record above: a push that lands counts the chunk delivered.
                    if let Some(pusher) = pusher {
                        pusher.offer(Stored { content, size, index });
                    }
                },
            )
            .await
    }

    /// The plan of `place`'s file ended: if the load it served is over, count what it left
    /// unread and forget the file.
    fn finished(&self, content: &ContentId) {
        let mut inner = lock(&self.inner);
        let Some(load) = inner.files.get_mut(content) else { return };
        load.running = false;
        let keepalive = load.keepalive.clone();
        if !inner.alive(&keepalive) {
            if let Some(load) = inner.files.remove(content) {
                count_unread(&load, self.store.chunk_size());
            }
        }
    }

    /// A shard's plan serves the checkpoint's loader: it goes on while any shard is open.
    fn keep_alive_with(&self, place: &Place, checkpoint: &Checkpoint) {
        let Some(file) = place.file() else { return };
        if let Some(load) = lock(&self.inner).files.get_mut(&file.content()) {
            load.keepalive = checkpoint.contents.clone();
        }
    }

    /// Start the plan of the shard after `place`'s in its checkpoint, fetching its header
    /// first: the loader will open it next.
    async fn next_shard(self: &Arc<Self>, place: &Place, checkpoint: &Checkpoint) {
        let shards = &checkpoint.shards;
        let Some(at) = shards.iter().position(|s| s == place.path()) else { return };
        let Some(next) = shards.get(at + 1).and_then(|p| place.sibling(p)) else { return };
        let Some(file) = next.file() else { return };
        let content = file.content();
        let keepalive = checkpoint.contents.clone();
        {
            let mut inner = lock(&self.inner);
            if !inner.alive(&keepalive) {
                return;
            }
            let load = inner
                .files
                .entry(content)
                .or_insert_with(|| FileLoad::new(Stage::Parsing, file.clone(), keepalive.clone()));
            if matches!(load.stage, Stage::Planned { started: true, .. }) || load.running {
                return;
            }
            load.stage = Stage::Parsing;
            load.running = true;
            load.keepalive = keepalive;
        }
        // A split GGUF's next split is a GGUF; whatever an index names is read as safetensors,
        // as the index says it is.
        let format = Kind::of(&next).and_then(Kind::header_format).unwrap_or(Format::Safetensors);
        let plan = match self.plan_fetching_header(&file, format).await {
            Ok(plan) => Arc::new(plan),
            Err(why) => {
                tracing::debug!(path = %file.remote.path, why = %why, "next shard not planned");
                if let Some(load) = lock(&self.inner).files.get_mut(&content) {
                    load.stage = Stage::None;
                }
                self.finished(&content);
                return;
            }
        };
        if let Some(load) = lock(&self.inner).files.get_mut(&content) {
            // The loader's reads of it so far count toward chaining the shard after it.
            load.walk.planned(&plan);
            load.stage = Stage::Planned { plan: plan.clone(), started: true, chained: false };
        }
        self.run_plan(&file, &plan, "the loader is one shard behind").await.finished().await;
        self.finished(&content);
    }

    /// The plan of a shard `file` no reader has opened yet: its header parsed from the store
    /// as for any file, the chunk after the stored prefix fetched until it parses (stored
    /// chunks cost nothing).
    async fn plan_fetching_header(
        self: &Arc<Self>,
        file: &FileRef,
        format: Format,
    ) -> Result<LoadPlan, NoPlan> {
        let cs = self.store.chunk_size();
        let mut fetched_after = None;
        loop {
            let (this, f) = (self.clone(), file.clone());
            let parsed = tokio::task::spawn_blocking(move || this.header_from_store(&f, format))
                .await
                .map_err(NoPlan::ParseTask)?;
            match parsed {
                Parsed::Plan(plan) => return Ok(plan),
                Parsed::Never(why) => return Err(why),
                Parsed::Later(had) => {
                    // A fetch that did not lengthen the stored prefix: the store cannot keep it.
                    if fetched_after == Some(had) {
                        return Err(NoPlan::HeaderNotStored);
                    }
                    fetched_after = Some(had);
                    self.fetcher.chunk_for_plan(file, had / cs).await.map_err(NoPlan::Fetch)?;
                }
            }
        }
    }

    /// All of a small `file` (an index), fetched (stored chunks cost nothing).
    async fn whole(self: &Arc<Self>, file: &FileRef) -> Option<Vec<u8>> {
        let cs = self.store.chunk_size();
        let mut out = Vec::new();
        for index in 0..crate::store::chunk_count(file.remote.size, cs) {
            out.extend_from_slice(&self.fetcher.chunk_for_plan(file, index).await.ok()?);
        }
        Some(out)
    }
}

/// What parsing a header from the store gave.
enum Parsed {
    Plan(LoadPlan),
    /// More of the header must be stored first; this many leading bytes were.
    Later(u64),
    Never(NoPlan),
}

/// Why a file has no load plan: a debug line, never an error to its reader.
#[derive(Debug, thiserror::Error)]
enum NoPlan {
    #[error("not a model file")]
    NotAModelFile,
    #[error("a header of {0} bytes is past the bound")]
    HeaderTooLong(u64),
    #[error(transparent)]
    Header(FormatError),
    #[error("no stored ONNX model names this file")]
    NoOnnxModel,
    /// A fetch of the next header chunk did not lengthen the stored prefix.
    #[error("the header's chunks are not stored")]
    HeaderNotStored,
    #[error("fetching the header: {0}")]
    Fetch(#[source] FetchError),
    #[error("the parse did not finish: {0}")]
    ParseTask(#[source] tokio::task::JoinError),
}

#[derive(Clone, Copy)]
enum Format {
    Safetensors,
    Gguf,
}

impl Format {
    fn parse(self, prefix: &[u8], size: u64) -> Result<Layout, FormatError> {
        match self {
            Format::Safetensors => formats::safetensors::parse(prefix, size),
            Format::Gguf => formats::gguf::parse(prefix, size),
        }
    }

    fn max_header(self) -> u64 {
        match self {
            Format::Safetensors => formats::safetensors::MAX_HEADER,
            Format::Gguf => formats::gguf::MAX_HEADER,
        }
    }

    fn plan(self, layout: &Layout, size: u64) -> LoadPlan {
        match self {
            Format::Safetensors => LoadPlan::safetensors(layout, size),
            Format::Gguf => LoadPlan::gguf(layout, size),
        }
    }
}

/// Empty `load`'s backlog, in the order its loader will read the chunks (its plan's, once it
/// has one), without those the read of `read` has just served or an earlier read touched:
/// pushing a page the loader is faulting on only races its read.
fn take_backlog(load: &mut FileLoad, read: Range<u64>, chunk_size: u64) -> Vec<u64> {
    let mut backlog = std::mem::take(&mut load.backlog);
    if let Stage::Planned { plan, .. } = &load.stage {
        let rank: HashMap<u64, usize> =
            plan.chunks(chunk_size).into_iter().enumerate().map(|(at, i)| (i, at)).collect();
        backlog.sort_by_key(|i| rank.get(i).copied().unwrap_or(usize::MAX));
    }
    let size = load.file.remote.size;
    backlog.retain(|&i| {
        let chunk = chunk_span(size, chunk_size, i);
        let served = chunk.start < read.end && read.start < chunk.end;
        !served && !load.walk.has_read(chunk)
    });
    backlog
}

/// The bytes of chunk `index` of a file of `size` bytes.
fn chunk_span(size: u64, chunk_size: u64, index: u64) -> Range<u64> {
    index * chunk_size..(index * chunk_size + chunk_size).min(size)
}

/// Count the chunks `load`'s plan fetched that no read touched.
fn count_unread(load: &FileLoad, chunk_size: u64) {
    let size = load.file.remote.size;
    let unread: u64 = load
        .fetched
        .iter()
        .filter(|&&i| !load.walk.has_read(chunk_span(size, chunk_size, i)))
        .map(|&i| chunk_len(size, chunk_size, i))
        .sum();
    if unread > 0 {
        crate::metrics::get().plan_unread(unread);
    }
}

/// The directory part of a repo path ("" at the top).
fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Whether directory `dir` is `ancestor` or below it.
fn is_within(dir: &str, ancestor: &str) -> bool {
    ancestor.is_empty()
        || dir == ancestor
        || dir.strip_prefix(ancestor).is_some_and(|rest| rest.starts_with('/'))
}
