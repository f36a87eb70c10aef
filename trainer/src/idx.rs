//! The IDX file format (MNIST, Fashion-MNIST): a validating reader for raw or gzipped files.
//! Every failure names the file and says what is wrong with it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// What can be wrong with a data directory or an IDX file.
#[derive(Debug, Error)]
pub enum IdxError {
    #[error("data directory {0} does not exist or is not a directory")]
    NoDir(PathBuf),
    #[error("{} not found in {} (looked for {name} and {name}.gz)", name, dir.display())]
    Missing { dir: PathBuf, name: String },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: wrong magic number 0x{found:08x}, expected 0x{expected:08x} ({what}); is this an IDX file?", path.display())]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
        what: &'static str,
    },
    #[error("{}: truncated: the header promises {expected} bytes, the file has {actual}", path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{}: {extra} unexpected bytes after the {expected} the header describes", path.display())]
    Trailing {
        path: PathBuf,
        expected: u64,
        extra: u64,
    },
    #[error("{}: empty data set (the header says 0 items or a 0-sized dimension)", path.display())]
    Empty { path: PathBuf },
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        images_path: PathBuf,
        images: usize,
        labels_path: PathBuf,
        labels: usize,
    },
    #[error("{}: label {label} at index {index} is out of range 0..={max}", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: u8,
        max: u8,
    },
    #[error("{}: images are {rows}x{cols} but the training images are {train_rows}x{train_cols}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        rows: usize,
        cols: usize,
        train_rows: usize,
        train_cols: usize,
    },
}

/// One split (train or test) of an MNIST-format data set, as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Row-major pixels, `len * rows * cols` bytes.
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps only the first `n` items (for quick runs).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.rows * self.cols);
        }
    }
}

/// A training and a test split with the same image shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSet {
    pub train: Split,
    pub test: Split,
}

/// Number of classes the model predicts; labels must be below it.
pub const NUM_CLASSES: u8 = 10;

/// Reads `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
/// `t10k-labels-idx1-ubyte` (each raw or `.gz`) from `dir`.
pub fn load_dir(dir: &Path) -> Result<DataSet, IdxError> {
    if !dir.is_dir() {
        return Err(IdxError::NoDir(dir.to_path_buf()));
    }
    let train = load_split(dir, "train")?;
    let test = load_split(dir, "t10k")?;
    if (test.rows, test.cols) != (train.rows, train.cols) {
        return Err(IdxError::ShapeMismatch {
            path: find(dir, "t10k-images-idx3-ubyte")?,
            rows: test.rows,
            cols: test.cols,
            train_rows: train.rows,
            train_cols: train.cols,
        });
    }
    Ok(DataSet { train, test })
}

fn load_split(dir: &Path, prefix: &str) -> Result<Split, IdxError> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (dims, images) = parse(&images_path, &read(&images_path)?, IMAGES_MAGIC, "images")?;
    let (ldims, labels) = parse(&labels_path, &read(&labels_path)?, LABELS_MAGIC, "labels")?;
    if dims[0] != ldims[0] {
        return Err(IdxError::CountMismatch {
            images_path,
            images: dims[0],
            labels_path,
            labels: ldims[0],
        });
    }
    if let Some(index) = labels.iter().position(|&l| l >= NUM_CLASSES) {
        return Err(IdxError::LabelOutOfRange {
            path: labels_path,
            index,
            label: labels[index],
            max: NUM_CLASSES - 1,
        });
    }
    Ok(Split {
        images,
        labels,
        rows: dims[1],
        cols: dims[2],
    })
}

/// The raw file if present, else the gzipped one.
fn find(dir: &Path, name: &str) -> Result<PathBuf, IdxError> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(IdxError::Missing {
        dir: dir.to_path_buf(),
        name: name.to_owned(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, IdxError> {
    let io = |source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = fs::read(path).map_err(io)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::with_capacity(bytes.len() * 4);
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Checks the header of an IDX file and returns its dimensions and payload.
/// `magic` fixes both the element type (unsigned byte) and the number of dimensions.
pub fn parse(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    what: &'static str,
) -> Result<(Vec<usize>, Vec<u8>), IdxError> {
    let path = || path.to_path_buf();
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    let be32 = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    if bytes.len() < 4 {
        return Err(IdxError::Truncated {
            path: path(),
            expected: 4,
            actual: bytes.len() as u64,
        });
    }
    let found = be32(0);
    if found != magic {
        return Err(IdxError::BadMagic {
            path: path(),
            found,
            expected: magic,
            what,
        });
    }
    if bytes.len() < header {
        return Err(IdxError::Truncated {
            path: path(),
            expected: header as u64,
            actual: bytes.len() as u64,
        });
    }
    let dims: Vec<usize> = (0..ndims).map(|d| be32(4 + 4 * d) as usize).collect();
    if dims.contains(&0) {
        return Err(IdxError::Empty { path: path() });
    }
    let payload = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    let expected = (header as u64).saturating_add(payload);
    let actual = bytes.len() as u64;
    if actual < expected {
        return Err(IdxError::Truncated {
            path: path(),
            expected,
            actual,
        });
    }
    if actual > expected {
        return Err(IdxError::Trailing {
            path: path(),
            expected,
            extra: actual - expected,
        });
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Encodes an IDX file of unsigned bytes (used by tests and tools that make data sets).
pub fn encode(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + payload.len());
    out.extend_from_slice(&[0, 0, 0x08, dims.len() as u8]);
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8], gz: bool) {
        if gz {
            let f = fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        } else {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }

    /// A complete data set of `n` train and `m` test 4x5 images.
    fn fixture(dir: &Path, n: u32, m: u32, gz: bool) {
        for (prefix, count) in [("train", n), ("t10k", m)] {
            let pixels: Vec<u8> = (0..count * 20).map(|i| (i % 251) as u8).collect();
            let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
            write(
                dir,
                &format!("{prefix}-images-idx3-ubyte"),
                &encode(&[count, 4, 5], &pixels),
                gz,
            );
            write(
                dir,
                &format!("{prefix}-labels-idx1-ubyte"),
                &encode(&[count], &labels),
                gz,
            );
        }
    }

    fn err(dir: &Path) -> String {
        load_dir(dir).unwrap_err().to_string()
    }

    #[test]
    fn reads_raw_and_gz_alike() {
        let raw = tempfile::tempdir().unwrap();
        let gz = tempfile::tempdir().unwrap();
        fixture(raw.path(), 30, 7, false);
        fixture(gz.path(), 30, 7, true);
        let a = load_dir(raw.path()).unwrap();
        let b = load_dir(gz.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            (a.train.len(), a.test.len(), a.train.rows, a.train.cols),
            (30, 7, 4, 5)
        );
        assert_eq!(a.train.images.len(), 30 * 20);
        assert_eq!(a.train.labels[13], 3);
        assert_eq!(a.train.images[21], 21);
    }

    #[test]
    fn wrong_magic_names_file() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 10, 5, false);
        // A labels file where images are expected.
        write(
            d.path(),
            "train-images-idx3-ubyte",
            &encode(&[10], &[0; 10]),
            false,
        );
        let e = err(d.path());
        assert!(
            e.contains("train-images-idx3-ubyte: wrong magic number 0x00000801"),
            "{e}"
        );
    }

    #[test]
    fn truncated_file_is_reported_with_sizes() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 10, 5, true);
        let full = encode(&[5, 4, 5], &[1; 100]);
        write(
            d.path(),
            "t10k-images-idx3-ubyte",
            &full[..full.len() - 3],
            true,
        );
        let e = err(d.path());
        assert!(e.contains("t10k-images-idx3-ubyte.gz: truncated"), "{e}");
        assert!(e.contains("116 bytes, the file has 113"), "{e}");
        // A header cut short.
        write(d.path(), "t10k-images-idx3-ubyte", &full[..6], true);
        assert!(err(d.path()).contains("truncated"));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 10, 5, false);
        let mut labels = encode(&[10], &[1; 10]);
        labels.push(0);
        write(d.path(), "train-labels-idx1-ubyte", &labels, false);
        assert!(err(d.path()).contains("1 unexpected bytes"));
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 10, 5, false);
        write(
            d.path(),
            "train-labels-idx1-ubyte",
            &encode(&[9], &[1; 9]),
            false,
        );
        let e = err(d.path());
        assert!(e.contains("holds 10 images but"), "{e}");
        assert!(e.contains("train-labels-idx1-ubyte holds 9 labels"), "{e}");
    }

    #[test]
    fn label_out_of_range() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 10, 5, false);
        let mut labels = vec![1u8; 5];
        labels[3] = 10;
        write(
            d.path(),
            "t10k-labels-idx1-ubyte",
            &encode(&[5], &labels),
            false,
        );
        let e = err(d.path());
        assert!(
            e.contains("label 10 at index 3 is out of range 0..=9"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_and_dir() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 10, 5, false);
        fs::remove_file(d.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let e = err(d.path());
        assert!(e.contains("t10k-labels-idx1-ubyte not found"), "{e}");
        let e = load_dir(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn test_images_must_match_train_shape() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 10, 5, false);
        write(
            d.path(),
            "t10k-images-idx3-ubyte",
            &encode(&[5, 5, 4], &[0; 100]),
            false,
        );
        assert!(err(d.path()).contains("images are 5x4 but the training images are 4x5"));
    }

    #[test]
    fn empty_and_corrupt_gzip() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path(), 10, 5, false);
        write(
            d.path(),
            "t10k-labels-idx1-ubyte",
            &encode(&[0], &[]),
            false,
        );
        assert!(err(d.path()).contains("empty data set"));
        fs::remove_file(d.path().join("t10k-labels-idx1-ubyte")).unwrap();
        fs::write(d.path().join("t10k-labels-idx1-ubyte.gz"), b"not gzip").unwrap();
        assert!(err(d.path()).contains("cannot read"));
    }
}
