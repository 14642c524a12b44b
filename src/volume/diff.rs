//! Which blocks of a volume to read: extent math over changed ranges and allocated extents.
//!
//! Takes a ranges file (a JSON array of `{"offset": N, "length": N}` byte extents changed
//! since the parent, as CSI `GetMetadataDelta` or a qcow2 dirty bitmap reports them) and the
//! source's allocated extents (SEEK_DATA/SEEK_HOLE); gives sets of block indices. Everything
//! but [`data_extents`] and [`read_ranges_file`] is pure. Must not read volume data.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("cannot read changed-ranges file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("changed-ranges file {path} is not a JSON array of {{\"offset\": N, \"length\": N}} objects: {reason}")]
    Malformed { path: String, reason: String },
    #[error("changed-ranges file {path}: range #{index} (offset {offset}, length {length}) reaches past the end of the volume ({size} bytes); pass the ranges of this volume's snapshot, or omit --changed-ranges to compare every block")]
    PastEnd {
        path: String,
        index: usize,
        offset: u64,
        length: u64,
        size: u64,
    },
}

/// One changed byte extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

/// Parses a ranges file's text.
pub fn parse_ranges(path: &str, text: &str) -> Result<Vec<ByteRange>, RangeError> {
    serde_json::from_str(text).map_err(|e| RangeError::Malformed {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

pub fn read_ranges_file(path: &Path) -> Result<Vec<ByteRange>, RangeError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RangeError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_ranges(&shown, &text)
}

/// Checks that every range lies inside a volume of `size` bytes.
pub fn validate_ranges(path: &str, ranges: &[ByteRange], size: u64) -> Result<(), RangeError> {
    for (index, r) in ranges.iter().enumerate() {
        if r.offset.checked_add(r.length).is_none_or(|end| end > size) {
            return Err(RangeError::PastEnd {
                path: path.to_string(),
                index,
                offset: r.offset,
                length: r.length,
                size,
            });
        }
    }
    Ok(())
}

/// A set of block indices as sorted, disjoint, non-adjacent half-open intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockSet {
    runs: Vec<(u64, u64)>,
}

impl BlockSet {
    /// The blocks of size `block` that any byte of `ranges` falls in.
    pub fn from_byte_ranges(ranges: &[ByteRange], block: u64) -> BlockSet {
        let mut runs: Vec<(u64, u64)> = ranges
            .iter()
            .filter(|r| r.length > 0)
            .map(|r| (r.offset / block, (r.offset + r.length - 1) / block + 1))
            .collect();
        runs.sort_unstable();
        BlockSet::merge(runs)
    }

    /// Blocks `start..end`.
    pub fn span(start: u64, end: u64) -> BlockSet {
        BlockSet::merge(if start < end {
            vec![(start, end)]
        } else {
            vec![]
        })
    }

    fn merge(sorted: Vec<(u64, u64)>) -> BlockSet {
        let mut runs: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (s, e) in sorted {
            match runs.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => runs.push((s, e)),
            }
        }
        BlockSet { runs }
    }

    pub fn union(&self, other: &BlockSet) -> BlockSet {
        let mut all: Vec<(u64, u64)> = self.runs.iter().chain(other.runs.iter()).copied().collect();
        all.sort_unstable();
        BlockSet::merge(all)
    }

    pub fn contains(&self, b: u64) -> bool {
        let i = self.runs.partition_point(|&(_, e)| e <= b);
        self.runs.get(i).is_some_and(|&(s, _)| s <= b)
    }

    pub fn len(&self) -> u64 {
        self.runs.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }
}

/// Byte extents that hold data, sorted and disjoint. Holes of a sparse file are left out;
/// where the source cannot report holes (a block device, a filesystem without SEEK_DATA) the
/// whole of it counts as data.
pub fn data_extents(file: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a valid fd with a valid whence has no memory effects.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error();
            if errno == Some(libc::ENXIO) {
                break; // no data after pos
            }
            return vec![(0, size)]; // cannot tell: everything is data
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        out.push((data, hole));
        pos = hole;
    }
    out
}

/// True when no byte of `start..end` is in `extents` (the range is entirely hole).
pub fn is_hole(extents: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = extents.partition_point(|&(_, e)| e <= start);
    extents.get(i).is_none_or(|&(s, _)| s >= end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn block_set_basics() {
        let r = [
            ByteRange {
                offset: 0,
                length: 1,
            },
            ByteRange {
                offset: 4095,
                length: 2,
            },
            ByteRange {
                offset: 10 * 4096,
                length: 0,
            },
        ];
        let s = BlockSet::from_byte_ranges(&r, 4096);
        assert_eq!(s.runs(), &[(0, 2)]);
        assert!(s.contains(0) && s.contains(1) && !s.contains(2) && !s.contains(10));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn ranges_past_end_are_refused() {
        let r = parse_ranges(
            "f",
            r#"[{"offset": 0, "length": 10}, {"offset": 8, "length": 4}]"#,
        )
        .unwrap();
        assert!(validate_ranges("f", &r, 12).is_ok());
        let e = validate_ranges("f", &r, 11).unwrap_err().to_string();
        assert!(e.contains("range #1") && e.contains("past the end"), "{e}");
        let overflow = [ByteRange {
            offset: u64::MAX,
            length: 2,
        }];
        assert!(validate_ranges("f", &overflow, u64::MAX).is_err());
    }

    #[test]
    fn malformed_ranges_are_named() {
        for bad in [
            "{}",
            "[{\"offset\": -1, \"length\": 1}]",
            "[{\"off\": 1}]",
            "not json",
        ] {
            let e = parse_ranges("r.json", bad).unwrap_err().to_string();
            assert!(e.contains("r.json"), "{e}");
        }
    }

    #[test]
    fn holes() {
        let ext = [(4096, 8192), (65536, 70000)];
        assert!(is_hole(&ext, 0, 4096));
        assert!(!is_hole(&ext, 0, 4097));
        assert!(is_hole(&ext, 8192, 65536));
        assert!(!is_hole(&ext, 69999, 80000));
        assert!(is_hole(&ext, 70000, 80000));
    }

    proptest! {
        #[test]
        fn from_byte_ranges_covers_exactly_the_touched_blocks(
            ranges in prop::collection::vec((0u64..1_000_000, 0u64..100_000), 0..20),
            shift in 9u32..16,
        ) {
            let block = 1u64 << shift;
            let ranges: Vec<ByteRange> = ranges.into_iter().map(|(offset, length)| ByteRange { offset, length }).collect();
            let set = BlockSet::from_byte_ranges(&ranges, block);
            // Disjoint, sorted, non-adjacent.
            for w in set.runs().windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
            let max_block = 1_100_000 / block + 2;
            for b in 0..max_block {
                let touched = ranges.iter().any(|r| r.length > 0 && r.offset < (b + 1) * block && r.offset + r.length > b * block);
                prop_assert_eq!(set.contains(b), touched, "block {}", b);
            }
        }

        #[test]
        fn union_is_set_union(a in prop::collection::vec((0u64..500, 1u64..50), 0..10), b in prop::collection::vec((0u64..500, 1u64..50), 0..10)) {
            let mk = |v: &Vec<(u64, u64)>| BlockSet::from_byte_ranges(&v.iter().map(|&(offset, length)| ByteRange { offset, length }).collect::<Vec<_>>(), 1);
            let (sa, sb) = (mk(&a), mk(&b));
            let u = sa.union(&sb);
            for x in 0..600 {
                prop_assert_eq!(u.contains(x), sa.contains(x) || sb.contains(x));
            }
        }
    }
}
