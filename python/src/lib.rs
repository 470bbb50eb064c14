//! `modelfs._native`: the extension module under the Python package `modelfs`
//! (`python/modelfs/__init__.py` gives it its Python shape). Each method is one call into
//! [`modelfs::cache::ModelCache`] with the GIL released, so other Python threads run while a
//! file is fetched; results cross as plain tuples and dicts, errors as Python's own exception
//! types chosen from [`ErrorKind`], never from a message (doc/LIBRARY.md).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelfs::cache::{CacheError, CacheOptions, ErrorKind, ModelCache, ModelFile};
use pyo3::exceptions::{
    PyFileNotFoundError, PyInterruptedError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// The Python exception for `e`: by its kind, with its message.
fn to_py(e: CacheError) -> PyErr {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
        ErrorKind::InvalidInput => PyValueError::new_err(message),
        ErrorKind::Interrupted => PyInterruptedError::new_err(message),
        ErrorKind::Io => PyOSError::new_err(message),
    }
}

/// The Python exception for an error of a file reader (a [`CacheError`] inside, by kind).
fn io_to_py(e: std::io::Error) -> PyErr {
    let message = e.to_string();
    match e.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
        std::io::ErrorKind::InvalidInput => PyValueError::new_err(message),
        _ => PyOSError::new_err(message),
    }
}

#[pyclass(frozen, module = "modelfs._native")]
struct NativeCache {
    cache: ModelCache,
}

#[pymethods]
impl NativeCache {
    #[new]
    #[pyo3(signature = (store=None, endpoint=None, token=None, offline=false, tier=None, max_connections=16, read_timeout=60.0, chunk_size=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        store: Option<PathBuf>,
        endpoint: Option<String>,
        token: Option<String>,
        offline: bool,
        tier: Option<String>,
        max_connections: usize,
        read_timeout: f64,
        chunk_size: Option<u64>,
    ) -> PyResult<Self> {
        if !(read_timeout.is_finite() && read_timeout > 0.0) {
            return Err(PyValueError::new_err("read_timeout must be a positive number of seconds"));
        }
        let options = CacheOptions {
            store,
            endpoint,
            token,
            offline,
            tier,
            max_connections: max_connections.max(1),
            read_timeout: Duration::from_secs_f64(read_timeout),
            chunk_size,
            ..CacheOptions::default()
        };
        let cache = py.detach(|| ModelCache::open(options)).map_err(to_py)?;
        Ok(Self { cache })
    }

    /// `(repo, commit, pipeline_tag, [(path, size, sha256)], {quant: ([path], total_bytes)})`
    fn scan_repo(&self, py: Python<'_>, repo: &str) -> PyResult<Py<PyAny>> {
        let m = py.detach(|| self.cache.scan_repo(repo)).map_err(to_py)?;
        let files: Vec<(String, u64, Option<String>)> =
            m.files.into_iter().map(|f| (f.path, f.size, f.sha256)).collect();
        let quants = PyDict::new(py);
        for (name, q) in m.quants {
            quants.set_item(name, (q.files, q.total_bytes))?;
        }
        Ok((m.repo, m.commit, m.pipeline_tag, files, quants).into_pyobject(py)?.into_any().unbind())
    }

    /// Download a quant view; `progress(loaded, total)` is called from the download's threads
    /// with the GIL taken for it. If it raises, the download stops and that exception is
    /// raised here. Returns `(commit, files, total_bytes, already_bytes, fetched_bytes)`.
    #[pyo3(signature = (repo, quant, progress=None))]
    fn download_quant(
        &self,
        py: Python<'_>,
        repo: &str,
        quant: &str,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(String, usize, u64, u64, u64)> {
        let raised: Arc<Mutex<Option<PyErr>>> = Arc::default();
        let kept = raised.clone();
        let callback = move |loaded: u64, total: u64| -> bool {
            let Some(f) = &progress else { return true };
            Python::attach(|py| match f.call1(py, (loaded, total)) {
                Ok(_) => true,
                Err(e) => {
                    let mut slot = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    slot.get_or_insert(e);
                    false
                }
            })
        };
        let result = py.detach(|| self.cache.download_quant(repo, quant, callback));
        let raised = raised.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        match (result, raised) {
            (_, Some(e)) => Err(e),
            (Ok(r), None) => {
                Ok((r.commit, r.files, r.total_bytes, r.already_bytes, r.fetched_bytes))
            }
            (Err(e), None) => Err(to_py(e)),
        }
    }

    /// The whole file, fetching what the store lacks.
    fn get_file(&self, py: Python<'_>, repo: &str, path: &str) -> PyResult<Py<PyBytes>> {
        let data = py.detach(|| self.cache.get_file(repo, path)).map_err(to_py)?;
        Ok(PyBytes::new(py, &data).unbind())
    }

    fn open_file(&self, py: Python<'_>, repo: &str, path: &str) -> PyResult<NativeFile> {
        let file = py.detach(|| self.cache.open_file(repo, path)).map_err(to_py)?;
        Ok(NativeFile { file: Some(file) })
    }

    /// `(repo, commit, {quant: (status, cached_bytes, total_bytes)})`
    fn get_manifest(&self, py: Python<'_>, repo: &str) -> PyResult<Py<PyAny>> {
        let m = py.detach(|| self.cache.get_manifest(repo)).map_err(to_py)?;
        let quants = PyDict::new(py);
        for (name, q) in m.quants {
            quants.set_item(name, (q.status.as_str(), q.cached_bytes, q.total_bytes))?;
        }
        Ok((m.repo, m.commit, quants).into_pyobject(py)?.into_any().unbind())
    }

    /// The store directory.
    fn store_dir(&self) -> Option<PathBuf> {
        self.cache.store_dir().map(PathBuf::from)
    }
}

/// A file read through the cache; `modelfs.ModelFile` wraps it as an `io.RawIOBase`.
#[pyclass(module = "modelfs._native")]
struct NativeFile {
    /// `None` once closed.
    file: Option<ModelFile>,
}

impl NativeFile {
    fn open(&mut self) -> PyResult<&mut ModelFile> {
        self.file.as_mut().ok_or_else(|| PyValueError::new_err("I/O operation on closed file"))
    }
}

#[pymethods]
impl NativeFile {
    /// Up to `size` bytes from the position (all that is left when negative); fewer only at
    /// the end of the file.
    #[pyo3(signature = (size=-1))]
    fn read(&mut self, py: Python<'_>, size: i64) -> PyResult<Py<PyBytes>> {
        let file = self.open()?;
        let data = py
            .detach(|| -> std::io::Result<Vec<u8>> {
                let pos = file.stream_position()?;
                let left = file.len().saturating_sub(pos);
                let want = if size < 0 { left } else { (size as u64).min(left) };
                let mut out = vec![0u8; want as usize];
                let mut got = 0;
                while got < out.len() {
                    match file.read(&mut out[got..])? {
                        0 => break,
                        n => got += n,
                    }
                }
                out.truncate(got);
                Ok(out)
            })
            .map_err(io_to_py)?;
        Ok(PyBytes::new(py, &data).unbind())
    }

    /// Move to `offset` from the start (`whence` 0), the position (1) or the end (2).
    #[pyo3(signature = (offset, whence=0))]
    fn seek(&mut self, offset: i64, whence: i32) -> PyResult<u64> {
        let to = match whence {
            0 => SeekFrom::Start(
                u64::try_from(offset)
                    .map_err(|_| PyValueError::new_err("negative seek position"))?,
            ),
            1 => SeekFrom::Current(offset),
            2 => SeekFrom::End(offset),
            _ => return Err(PyValueError::new_err(format!("invalid whence ({whence})"))),
        };
        self.open()?.seek(to).map_err(io_to_py)
    }

    fn tell(&mut self) -> PyResult<u64> {
        self.open()?.stream_position().map_err(io_to_py)
    }

    fn size(&mut self) -> PyResult<u64> {
        Ok(self.open()?.len())
    }

    /// Release the file (it may be evicted again once no one has it open).
    fn close(&mut self) {
        self.file = None;
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeCache>()?;
    m.add_class::<NativeFile>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
