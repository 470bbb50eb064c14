//! Pushing load-plan chunks into the kernel's page cache (doc/DESIGN.md, "Pushing planned
//! chunks"; doc/SEMANTICS.md, "Cold start").
//!
//! A loader that maps a file (safetensors' `safe_open`, a GGUF memmap) takes one page fault
//! per read-ahead window of 128 KiB, and on a file that is not yet verified (so not passed
//! through) each fault is a FUSE read that waits for this daemon: about ten thousand round
//! trips for a 1 GiB checkpoint, one at a time, each behind the fetches, hashing and store
//! writes that share the machine's cores. A load plan has already fetched those bytes before
//! the loader asks; what it lacked was a way to hand them over without being asked. Once a
//! plan has stored a chunk, this module copies it into the page cache of every inode that is
//! open through the daemon (`FUSE_NOTIFY_STORE`), so the loader's faults find the pages there
//! and never leave the kernel.
//!
//! The pushes run on one thread of their own, fed through a bounded queue: the kernel stores a
//! page only once it can lock it, and a page a reader waits on stays locked until that read is
//! answered, so a push must never be made by a thread that answers reads. A full queue drops
//! the push, not the bytes: the read path serves them as before. Only checked bytes are pushed
//! (read back from the store through its crcs, a piece at a time), and a content found bad
//! while its chunk was being pushed has its pages dropped again here, as
//! `ModelFs::set_on_failed` drops them for every other page.
//!
//! Pages the kernel creates for a push are charged to this process's memory cgroup, not the
//! loader's (doc/OPERATIONS.md, "Memory accounting"); `push_pages = false` turns pushing off.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::manifest::ContentId;
use crate::store::{chunk_len, ChunkStore, FileState};

/// Chunks waiting to be pushed. A plan stores at most `--max-inflight-bytes` ahead of its
/// pushes before they fall behind; 64 chunks (512 MiB at the default chunk size) is more than
/// any plan keeps in flight, so a drop means the kernel is not taking pushes at all.
const QUEUE: usize = 64;

/// Bytes read back from the store and pushed at once: the store lends a buffer this large to
/// the pushing thread (not a whole chunk, which `--chunk-size` can make 1 GiB), as the
/// verifier reads in 1 MiB pieces for the same reason.
const PIECE: usize = 1 << 20;

/// What the FUSE edge offers this module: the kernel's page cache of the mount's inodes.
pub trait KernelPages: Send + Sync {
    /// The inodes with handles open whose reads go through the kernel's page cache (not
    /// passed through to a backing file, whose own page cache the kernel reads instead): a
    /// handful at a time, the files programs have open.
    fn cached_inodes(&self) -> Vec<u64>;

    /// Put `data` into the page cache of `ino` at `offset`. An inode the kernel no longer
    /// has (its last handle closed meanwhile) is not an error: there is nothing to fill.
    fn store(&self, ino: u64, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Drop every cached page of `ino`.
    fn forget(&self, ino: u64) -> io::Result<()>;
}

/// The content an inode shows, if it is a file (`ModelFs::content_of`).
pub type ContentOf = Arc<ContentOfFn>;
pub type ContentOfFn = dyn Fn(u64) -> Option<ContentId> + Send + Sync;

/// Told of each chunk pushed into at least one inode's page cache.
pub type OnPushed = Box<dyn Fn(&ContentId, u64) + Send>;

/// A chunk a plan stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub content: ContentId,
    pub size: u64,
    pub index: u64,
}

/// What the pushing thread is given: a chunk a plan has just stored, or the chunks a plan
/// stored while no handle of their file was open (no inode to push to then), handed over in
/// the loader's order at the file's first read. A backlog is one job, so that a shard's worth
/// of chunks never overflows the queue.
enum Job {
    Chunk(Stored),
    Backlog(Vec<Stored>),
}

/// The sending half: cheap to call from any task, never blocks.
pub struct Pusher {
    queue: SyncSender<Job>,
    /// The thread has gone (it panicked): said once.
    gone: AtomicBool,
}

impl Pusher {
    /// Start the pushing thread. It ends when the `Pusher` is dropped.
    pub fn start(
        store: Arc<dyn ChunkStore>,
        content_of: ContentOf,
        pages: Arc<dyn KernelPages>,
        on_pushed: OnPushed,
    ) -> io::Result<Pusher> {
        let (queue, jobs) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("modelfs-push".into())
            .spawn(move || run(jobs, &*store, &*content_of, &*pages, &on_pushed))?;
        Ok(Pusher { queue, gone: AtomicBool::new(false) })
    }

    /// Push `chunk` when the thread gets to it; dropped (debug line) when the queue is full.
    pub fn offer(&self, chunk: Stored) {
        self.send(Job::Chunk(chunk));
    }

    /// Push `chunks`, in this order, when the thread gets to them; dropped as one when the
    /// queue is full.
    pub fn offer_backlog(&self, chunks: Vec<Stored>) {
        if !chunks.is_empty() {
            self.send(Job::Backlog(chunks));
        }
    }

    fn send(&self, job: Job) {
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                let (content, chunks) = match &job {
                    Job::Chunk(c) => (c.content, 1),
                    Job::Backlog(b) => (b[0].content, b.len()),
                };
                tracing::debug!(%content, chunks, "page push queue full; the chunks are left to reads")
            }
            Err(TrySendError::Disconnected(_)) => {
                if !self.gone.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the page push thread has stopped; planned chunks are left to reads"
                    );
                }
            }
        }
    }
}

fn run(
    jobs: Receiver<Job>,
    store: &dyn ChunkStore,
    content_of: &ContentOfFn,
    pages: &dyn KernelPages,
    on_pushed: &OnPushed,
) {
    for job in jobs {
        let chunks = match job {
            Job::Chunk(chunk) => vec![chunk],
            Job::Backlog(chunks) => chunks,
        };
        for chunk in chunks {
            let pushed = push(store, content_of, pages, chunk);
            if pushed > 0 {
                crate::metrics::get().plan_pushed(pushed);
                on_pushed(&chunk.content, chunk.index);
            }
        }
    }
}

/// Push one stored chunk into the page cache of every inode of its content that is open
/// through the cache; the bytes pushed (once per inode).
pub fn push(
    store: &dyn ChunkStore,
    content_of: &ContentOfFn,
    pages: &dyn KernelPages,
    chunk: Stored,
) -> u64 {
    let inodes: Vec<u64> = pages
        .cached_inodes()
        .into_iter()
        .filter(|&ino| content_of(ino) == Some(chunk.content))
        .collect();
    if inodes.is_empty() {
        return 0;
    }
    let cs = store.chunk_size();
    let len = chunk_len(chunk.size, cs, chunk.index) as usize;
    let offset = chunk.index * cs;
    let mut pushed = 0;
    for at in (0..len).step_by(PIECE) {
        let piece = at..(at + PIECE).min(len);
        let mut to_inodes = |bytes: &[u8]| {
            for &ino in &inodes {
                match pages.store(ino, offset + at as u64, bytes) {
                    Ok(()) => pushed += bytes.len() as u64,
                    Err(e) => {
                        tracing::debug!(ino, offset, error = %e, "chunk not pushed to the page cache")
                    }
                }
            }
        };
        match store.visit_chunk(&chunk.content, chunk.index, piece, &mut to_inodes) {
            Ok(true) => {}
            // Evicted or dropped since the plan stored it: nothing checked to push.
            Ok(false) => break,
            Err(e) => {
                tracing::debug!(content = %chunk.content, index = chunk.index, error = %e, "chunk to push not read");
                break;
            }
        }
    }
    // Found bad between the reads above and the pushes: the failure's own invalidation may
    // have run before the pushes landed, so drop the pages again; so too when the store cannot
    // say.
    let bad =
        !matches!(store.file_record(&chunk.content), Ok(Some(r)) if r.state != FileState::Failed);
    if bad && pushed > 0 {
        for &ino in &inodes {
            if let Err(e) = pages.forget(ino) {
                tracing::warn!(ino, error = %e, "pages of a bad file not invalidated");
            }
        }
        return 0;
    }
    pushed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// The kernel's page cache, as far as pushes go: the bytes each inode holds.
    #[derive(Default)]
    struct Pages {
        cached: Vec<u64>,
        /// The inodes the kernel still has; a push to another is dropped without an error,
        /// as fuser reports the kernel's ENOENT.
        known: HashSet<u64>,
        held: Mutex<Vec<(u64, u64, Vec<u8>)>>,
        forgotten: Mutex<Vec<u64>>,
    }

    impl KernelPages for Pages {
        fn cached_inodes(&self) -> Vec<u64> {
            self.cached.clone()
        }
        fn store(&self, ino: u64, offset: u64, data: &[u8]) -> io::Result<()> {
            if self.known.contains(&ino) {
                self.held.lock().unwrap().push((ino, offset, data.to_vec()));
            }
            Ok(())
        }
        fn forget(&self, ino: u64) -> io::Result<()> {
            self.forgotten.lock().unwrap().push(ino);
            Ok(())
        }
    }

    const CS: u64 = 64 << 10;

    fn stored_file(store: &MemoryStore, size: u64) -> (ContentId, Vec<u8>) {
        let content = ContentId([7; 32]);
        let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        crate::store::memory::conformance::put_file(store, &content, &bytes);
        (content, bytes)
    }

    #[test]
    fn a_stored_chunk_goes_to_every_inode_open_through_the_cache_and_no_other() {
        let store = MemoryStore::new(CS);
        let size = 2 * CS + 100;
        let (content, bytes) = stored_file(&store, size);
        // 1, 2 and 3 show the content, 4 another. 1, 2 and 4 are open through the cache (3 is
        // passed through); 2 the kernel has dropped since.
        let pages =
            Pages { cached: vec![1, 2, 4], known: HashSet::from([1, 3, 4]), ..Pages::default() };
        let content_of = move |ino: u64| match ino {
            1..=3 => Some(content),
            _ => Some(ContentId([8; 32])),
        };
        // The last chunk: short, and pushed at its offset, never past the end of the file.
        let pushed = push(&store, &content_of, &pages, Stored { content, size, index: 2 });
        // Counted for 1 and 2: the kernel does not say that it had dropped 2.
        assert_eq!(pushed, 200);
        let held = pages.held.lock().unwrap();
        assert_eq!(*held, vec![(1, 2 * CS, bytes[2 * CS as usize..].to_vec())]);
    }

    #[test]
    fn nothing_is_pushed_of_a_chunk_not_stored_or_of_a_content_found_bad() {
        let store = MemoryStore::new(CS);
        let size = 3 * CS;
        let (content, _) = stored_file(&store, size);
        let pages = Pages { cached: vec![1], known: HashSet::from([1]), ..Pages::default() };
        let content_of = move |_: u64| Some(content);
        // Another content, which no open inode shows.
        let other = ContentId([9; 32]);
        assert_eq!(push(&store, &content_of, &pages, Stored { content: other, size, index: 0 }), 0);
        // A chunk this content does not have stored.
        assert_eq!(
            push(&store, &content_of, &pages, Stored { content, size: 9 * CS, index: 8 }),
            0
        );
        assert!(pages.held.lock().unwrap().is_empty());

        // Found bad while its chunk was being pushed (the record says failed, the chunk is
        // still readable): what the push put there is dropped again.
        store.set_file_state(&content, FileState::Failed).unwrap();
        assert_eq!(push(&store, &content_of, &pages, Stored { content, size, index: 1 }), 0);
        assert_eq!(pages.held.lock().unwrap().len(), 1);
        assert_eq!(*pages.forgotten.lock().unwrap(), vec![1]);

        // Discarded as bad (its chunks gone): nothing to push at all.
        store.discard_file(&content, FileState::Failed).unwrap();
        assert_eq!(push(&store, &content_of, &pages, Stored { content, size, index: 0 }), 0);
        assert_eq!(pages.held.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_thread_pushes_what_it_is_offered_and_ends_with_its_pusher() {
        let store = Arc::new(MemoryStore::new(CS));
        let size = 3 * CS;
        let (content, bytes) = stored_file(&store, size);
        let pages =
            Arc::new(Pages { cached: vec![5], known: HashSet::from([5]), ..Pages::default() });
        let (told, delivered) = mpsc::channel();
        let on_pushed: OnPushed = Box::new(move |c: &ContentId, index| {
            let _ = told.send((*c, index));
        });
        let pusher =
            Pusher::start(store, Arc::new(move |_: u64| Some(content)), pages.clone(), on_pushed)
                .unwrap();
        pusher.offer(Stored { content, size, index: 1 });
        pusher.offer(Stored { content, size, index: 0 });
        // A backlog, pushed in the order given, after what was offered before it.
        let backlog = [2, 0, 1].map(|index| Stored { content, size, index }).to_vec();
        pusher.offer_backlog(backlog);
        pusher.offer_backlog(Vec::new());
        // Dropping the pusher closes the queue; the thread drains it first, then ends, which
        // ends the stream of deliveries.
        drop(pusher);
        let delivered: Vec<_> = delivered.iter().collect();
        let order = [1, 0, 2, 0, 1].map(|index| (content, index)).to_vec();
        assert_eq!(delivered, order);
        let held = pages.held.lock().unwrap();
        assert_eq!(held[0], (5, CS, bytes[CS as usize..2 * CS as usize].to_vec()));
        assert_eq!(held[1], (5, 0, bytes[..CS as usize].to_vec()));
        assert_eq!(held[2], (5, 2 * CS, bytes[2 * CS as usize..].to_vec()));
    }
}
