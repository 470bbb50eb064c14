//! How `pull` shows its progress: bars on a terminal (one per file in flight above a total
//! with rate and ETA, and a line per finished file); without one (a log, CI, `| tee`), a line
//! per finished file and a progress line every [`PLAIN_EVERY`] (bytes, rate, ETA), so a long
//! file is never a long silence; or nothing (tests).
//!
//! Rates and ETAs come from one [`RateMeter`]: an exponentially weighted average over
//! [`RATE_TIME_CONSTANT`], shown only once [`RATE_WARMUP`] of transfer has been seen. The
//! first second of a download (connections opening, the first chunk's time to first byte)
//! says nothing about the rest; an ETA computed from it was 45 minutes for a 20-second pull.

use crate::lock;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::human_bytes;
use crate::hub::RemoteFile;

/// Without a terminal, a progress line this often: often enough that a log shows the pull is
/// alive and how fast it goes, rarely enough that a long pull's log stays readable.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// The rate follows changes over about this long: several chunk fetches at CDN speeds, so one
/// slow request does not swing it, and a link that slows down shows within seconds.
const RATE_TIME_CONSTANT: Duration = Duration::from_secs(3);

/// No rate (and no ETA) is shown before this much time with bytes flowing.
const RATE_WARMUP: Duration = Duration::from_secs(2);

/// The meter takes a new sample at most this often; reads in between reuse the last one.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// A smoothed transfer rate. Fed the cumulative byte count at arbitrary times; every
/// [`SAMPLE_EVERY`] the rate over the last interval is folded into an exponentially weighted
/// average whose weight follows the interval's length (so irregular sampling weighs time,
/// not calls).
#[derive(Clone, Debug, Default)]
pub struct RateMeter {
    /// When the first byte was seen.
    first: Option<Instant>,
    /// The last sample: when, and the byte count then.
    last: Option<(Instant, u64)>,
    /// Bytes per second, smoothed; `None` before the first full interval.
    rate: Option<f64>,
    bytes: u64,
}

impl RateMeter {
    /// `bytes` more arrived at `now`.
    pub fn add(&mut self, now: Instant, bytes: u64) {
        if bytes > 0 && self.first.is_none() {
            self.first = Some(now);
            self.last = Some((now, self.bytes));
        }
        self.bytes += bytes;
        self.sample(now);
    }

    fn sample(&mut self, now: Instant) {
        let Some((at, then)) = self.last else { return };
        let dt = now.saturating_duration_since(at);
        if dt < SAMPLE_EVERY {
            return;
        }
        let instant = (self.bytes - then) as f64 / dt.as_secs_f64();
        let weight = 1.0 - (-dt.as_secs_f64() / RATE_TIME_CONSTANT.as_secs_f64()).exp();
        self.rate = Some(match self.rate {
            Some(rate) => rate + weight * (instant - rate),
            None => instant,
        });
        self.last = Some((now, self.bytes));
    }

    /// The smoothed rate at `now`, once warmed up.
    pub fn rate(&mut self, now: Instant) -> Option<f64> {
        self.sample(now);
        let warm = self.first.is_some_and(|f| now.saturating_duration_since(f) >= RATE_WARMUP);
        self.rate.filter(|r| warm && *r > 0.0)
    }

    /// Time left for `remaining` bytes at the smoothed rate, once warmed up.
    pub fn eta(&mut self, now: Instant, remaining: u64) -> Option<Duration> {
        let rate = self.rate(now)?;
        Some(Duration::from_secs_f64((remaining as f64 / rate).min(1e7)))
    }
}

/// `6 s`, `3 min 5 s`, `2 h 14 min`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The progress line printed without a terminal: `12.0 MiB of 19.0 MiB (63%), 1.2 MiB/s, ETA 6 s`.
pub fn plain_line(done: u64, total: u64, rate: Option<f64>, eta: Option<Duration>) -> String {
    let percent = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    let mut line = format!("{} of {} ({percent}%)", human_bytes(done), human_bytes(total));
    if let Some(rate) = rate {
        let _ = write!(line, ", {}/s", human_bytes(rate as u64));
    }
    if let Some(eta) = eta {
        let _ = write!(line, ", ETA {}", human_duration(eta));
    }
    line
}

/// How a pull shows its progress (see the module documentation). Clones share everything.
#[derive(Clone)]
pub struct Progress {
    mode: Arc<Mode>,
    total: ProgressBar,
    meter: Arc<Mutex<RateMeter>>,
    /// The plain mode's ticker, stopped by [`Progress::finish`].
    ticker: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// The callback asked to stop: no further chunk is started.
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

enum Mode {
    Bars(MultiProgress),
    Plain,
    Quiet,
    /// A library caller's callback (`crate::cache`), told `(loaded, total)` bytes; `false`
    /// stops the download.
    Callback(ProgressCallback),
}

/// What [`Progress::callback`] calls: `(loaded, total)` bytes of the download; returning
/// `false` asks it to stop.
pub type ProgressCallback = Box<dyn Fn(u64, u64) -> bool + Send + Sync>;

/// Width of the file name column of a file's bar; longer paths are cut at the front, where
/// the directory is, so the file name stays readable.
const NAME_WIDTH: usize = 40;

impl Progress {
    pub fn bars() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let meter = Arc::new(Mutex::new(RateMeter::default()));
        let (rate_meter, eta_meter) = (meter.clone(), meter.clone());
        let total_style =
            style("{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {rate} ETA {eta}")
                .with_key("rate", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let rate = lock(&rate_meter).rate(Instant::now());
                    let _ = match rate {
                        Some(r) => write!(w, "{}/s", human_bytes(r as u64)),
                        None => write!(w, "-"),
                    };
                })
                .with_key("eta", move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let remaining = state.len().unwrap_or(0).saturating_sub(state.pos());
                    let eta = lock(&eta_meter).eta(Instant::now(), remaining);
                    let _ = match eta {
                        Some(eta) => write!(w, "{}", human_duration(eta)),
                        None => write!(w, "-"),
                    };
                });
        let total = multi.add(ProgressBar::new(0).with_style(total_style));
        Self::with(Mode::Bars(multi), total, meter)
    }

    pub fn plain() -> Self {
        Self::with(Mode::Plain, ProgressBar::hidden(), Arc::default())
    }

    pub fn quiet() -> Self {
        Self::with(Mode::Quiet, ProgressBar::hidden(), Arc::default())
    }

    /// Progress told to `f` as `(loaded, total)` bytes: at the start, and after each chunk
    /// (from the download's tasks, so `f` must be quick). `f` returning `false` stops the
    /// download: chunks in flight end, no other starts, and the download reports
    /// [`super::CommandError::Cancelled`].
    pub fn callback(f: ProgressCallback) -> Self {
        Self::with(Mode::Callback(f), ProgressBar::hidden(), Arc::default())
    }

    fn with(mode: Mode, total: ProgressBar, meter: Arc<Mutex<RateMeter>>) -> Self {
        Self { mode: Arc::new(mode), total, meter, ticker: Arc::default(), stopped: Arc::default() }
    }

    /// Whether the callback asked the download to stop.
    pub fn stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Acquire)
    }

    fn tell(&self) {
        if let Mode::Callback(f) = &*self.mode {
            if !f(self.total.position(), self.total.length().unwrap_or(0)) {
                self.stopped.store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }

    /// The download starts: `total` bytes selected, `already` of them stored. Called on the
    /// runtime (the plain mode's ticker runs there).
    pub(super) fn start(&self, total: u64, already: u64) {
        self.total.set_length(total);
        self.total.set_position(already);
        self.tell();
        if let Mode::Plain = &*self.mode {
            let (bar, meter) = (self.total.clone(), self.meter.clone());
            let ticker = tokio::spawn(async move {
                let mut every = tokio::time::interval(PLAIN_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    let (done, total) = (bar.position(), bar.length().unwrap_or(0));
                    let now = Instant::now();
                    let mut meter = lock(&meter);
                    let (rate, eta) = (meter.rate(now), meter.eta(now, total.saturating_sub(done)));
                    eprintln!("pulling   {}", plain_line(done, total, rate, eta));
                }
            });
            *lock(&self.ticker) = Some(ticker);
        }
    }

    pub(super) fn file_started(&self, file: &RemoteFile, stored: u64) -> ProgressBar {
        let Mode::Bars(multi) = &*self.mode else { return ProgressBar::hidden() };
        let bar = ProgressBar::new(file.size)
            .with_style(style("{msg} [{bar:30}] {bytes}/{total_bytes}"))
            .with_message(left_cut(&file.path, NAME_WIDTH))
            .with_position(stored);
        multi.insert_before(&self.total, bar)
    }

    pub(super) fn advance(&self, bar: Option<&ProgressBar>, bytes: u64) {
        if let Some(bar) = bar {
            bar.inc(bytes);
        }
        self.total.inc(bytes);
        lock(&self.meter).add(Instant::now(), bytes);
        self.tell();
    }

    pub(super) fn file_done(
        &self,
        bar: Option<ProgressBar>,
        file: &RemoteFile,
        outcome: &Result<(), String>,
    ) {
        if let Some(bar) = bar {
            bar.finish_and_clear();
            if let Mode::Bars(multi) = &*self.mode {
                multi.remove(&bar);
            }
        }
        let line = match outcome {
            Ok(()) => format!("verified  {} ({})", file.path, human_bytes(file.size)),
            Err(reason) => format!("FAILED    {}: {reason}", file.path),
        };
        match &*self.mode {
            // Printed above the bars, which stay at the bottom.
            Mode::Bars(multi) => {
                let _ = multi.println(line);
            }
            Mode::Plain => eprintln!("{line}"),
            Mode::Quiet | Mode::Callback(_) => {}
        }
    }

    pub(super) fn finish(&self) {
        if let Some(ticker) = lock(&self.ticker).take() {
            ticker.abort();
        }
        self.total.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants of this file; a typo falls back to a plain bar rather than
    // failing a download.
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// `path` in at most `width` characters, padded, cut at the front with `…`.
fn left_cut(path: &str, width: usize) -> String {
    let n = path.chars().count();
    if n <= width {
        return format!("{path:<width$}");
    }
    let tail: String = path.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    /// A pull whose first second is slow (connections opening) and then runs at 10 MiB/s:
    /// no ETA during the warm-up, and after it an ETA near the truth, not the 45 minutes the
    /// first second alone would give.
    #[test]
    fn the_eta_waits_for_a_rate_worth_showing() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = RateMeter::default();
        let total = 200 * MIB;
        m.add(at(0), 64 << 10);
        m.add(at(900), 0);
        assert_eq!(m.eta(at(900), total), None, "no ETA in the warm-up");
        let mut done = 64 << 10;
        for step in 1..=40u64 {
            // 10 MiB/s from t = 1 s on, sampled every 250 ms.
            done += (10 * MIB) / 4;
            m.add(at(1000 + step * 250), (10 * MIB) / 4);
        }
        let now = at(11_000);
        let eta = m.eta(now, total - done).expect("warmed up").as_secs_f64();
        let truth = (total - done) as f64 / (10 * MIB) as f64;
        assert!((eta - truth).abs() / truth < 0.15, "ETA {eta:.1} s against {truth:.1} s");
        let rate = m.rate(now).unwrap() / MIB as f64;
        assert!((rate - 10.0).abs() < 1.0, "rate {rate:.2} MiB/s");
    }

    #[test]
    fn a_stalled_transfer_shows_a_falling_rate() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for s in 0..10u64 {
            m.add(t0 + Duration::from_secs(s), 10 * MIB);
        }
        let before = m.rate(t0 + Duration::from_secs(10)).unwrap();
        let after = m.rate(t0 + Duration::from_secs(20)).unwrap_or(0.0);
        assert!(after < before / 2.0, "{after} after a 10 s stall, {before} before");
    }

    #[test]
    fn lines_and_durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(6)), "6 s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3 min 5 s");
        assert_eq!(human_duration(Duration::from_secs(8040)), "2 h 14 min");
        assert_eq!(
            plain_line(12 * MIB, 19 * MIB, Some(1.5 * MIB as f64), Some(Duration::from_secs(6))),
            "12.0 MiB of 19.0 MiB (63%), 1.5 MiB/s, ETA 6 s"
        );
        assert_eq!(plain_line(MIB, 19 * MIB, None, None), "1.0 MiB of 19.0 MiB (5%)");
        assert_eq!(plain_line(0, 0, None, None), "0 B of 0 B (100%)");
    }

    proptest! {
        #[test]
        fn cut_names_keep_their_tail_and_width(path in "[a-z/._]{0,80}", width in 2usize..50) {
            let cut = left_cut(&path, width);
            prop_assert_eq!(cut.chars().count(), width.max(path.chars().count().min(width)));
            let trimmed = cut.trim_end();
            if path.chars().count() > width {
                prop_assert!(cut.starts_with('…'));
                prop_assert!(path.ends_with(&cut['…'.len_utf8()..]));
            } else {
                prop_assert_eq!(trimmed, path.trim_end());
            }
        }

        /// Whatever arrives when, the meter never reports a negative or infinite rate.
        #[test]
        fn rates_stay_finite(steps in proptest::collection::vec((0u64..5_000, 0u64..(1 << 30)), 1..50)) {
            let t0 = Instant::now();
            let mut m = RateMeter::default();
            let mut t = 0;
            for (gap, bytes) in steps {
                t += gap;
                m.add(t0 + Duration::from_millis(t), bytes);
                if let Some(r) = m.rate(t0 + Duration::from_millis(t)) {
                    prop_assert!(r.is_finite() && r > 0.0);
                }
            }
        }
    }
}
