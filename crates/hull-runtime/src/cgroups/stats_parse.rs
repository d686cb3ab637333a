//! Parsers for the cgroup stat file formats.

use std::collections::BTreeMap;

use super::stats::{BlkioEntry, Psi};

/// "key value" lines (memory.stat, cpu.stat, cpuacct.stat, *.events).
pub(crate) fn keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_owned(), v))
        })
        .collect()
}

/// A single number; "max" is u64::MAX as runc reports it.
pub(crate) fn number(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(u64::MAX),
        t => t.parse().ok(),
    }
}

/// "0-3,8,10-11" → [0, 1, 2, 3, 8, 10, 11].
pub(crate) fn cpu_list(text: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
            out.extend(a..=b);
        }
    }
    out
}

/// v1 blkio files: "8:0 Read 4096" lines; the bare "Total N" summary line is dropped.
pub(crate) fn blkio_v1(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, value] => (*dev, *op, *value),
                // blkio.time/sectors have no op column.
                [dev, value] if dev.contains(':') => (*dev, "", *value),
                _ => return None,
            };
            let (maj, min) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                op: op.to_owned(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// io.stat: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 ..." → (bytes, ios) in v1's layout.
pub(crate) fn io_stat_v2(text: &str) -> (Vec<BlkioEntry>, Vec<BlkioEntry>) {
    let (mut bytes, mut ios) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some((maj, min)) = it.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse() else { continue };
            let (table, op) = match k {
                "rbytes" => (&mut bytes, "Read"),
                "wbytes" => (&mut bytes, "Write"),
                "rios" => (&mut ios, "Read"),
                "wios" => (&mut ios, "Write"),
                _ => continue,
            };
            table.push(BlkioEntry {
                major,
                minor,
                op: op.to_owned(),
                value,
            });
        }
    }
    (bytes, ios)
}

/// "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" / "full ..." lines.
pub(crate) fn psi(text: &str) -> Psi {
    let mut out = Psi::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let data = match it.next() {
            Some("some") => &mut out.some,
            Some("full") => &mut out.full,
            _ => continue,
        };
        for kv in it {
            match kv.split_once('=') {
                Some(("avg10", v)) => data.avg10 = v.parse().unwrap_or_default(),
                Some(("avg60", v)) => data.avg60 = v.parse().unwrap_or_default(),
                Some(("avg300", v)) => data.avg300 = v.parse().unwrap_or_default(),
                Some(("total", v)) => data.total = v.parse().unwrap_or_default(),
                _ => {}
            }
        }
    }
    out
}

/// cpuacct.usage_all: a "cpu user system" header, then one row per CPU.
pub(crate) fn usage_all(text: &str) -> (Vec<u64>, Vec<u64>) {
    let (mut user, mut kernel) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [_, u, k] = f.as_slice() {
            user.push(*u);
            kernel.push(*k);
        }
    }
    (kernel, user)
}

/// "hugepages-2048kB" → "2MB", as the hugetlb controller names its files.
pub(crate) fn page_size_name(dir_name: &str) -> Option<String> {
    let kb: u64 = dir_name
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()?;
    Some(match kb {
        k if k % (1 << 20) == 0 => format!("{}GB", k >> 20),
        k if k % (1 << 10) == 0 => format!("{}MB", k >> 10),
        k => format!("{k}KB"),
    })
}

pub(crate) fn page_sizes() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| page_size_name(&e.file_name().to_string_lossy()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_files() {
        let k =
            keyed("cache 4096\nrss 8192\nbogus\nhierarchical_memory_limit 9223372036854771712\n");
        assert_eq!(k["cache"], 4096);
        assert_eq!(k["hierarchical_memory_limit"], 9_223_372_036_854_771_712);
        assert!(!k.contains_key("bogus"));
        assert_eq!(number("max\n"), Some(u64::MAX));
        assert_eq!(number(" 42\n"), Some(42));
        assert_eq!(cpu_list("0-2,5,7-8\n"), vec![0, 1, 2, 5, 7, 8]);
        assert!(cpu_list("\n").is_empty());
        let b = blkio_v1("8:0 Read 100\n8:0 Write 5\n8:0 Total 105\nTotal 105\n8:16 7\n");
        assert_eq!(b.len(), 4);
        assert_eq!((b[1].op.as_str(), b[1].value), ("Write", 5));
        assert_eq!((b[3].minor, b[3].op.as_str(), b[3].value), (16, "", 7));
        let (bytes, ios) = io_stat_v2("8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(bytes.len(), 2);
        assert_eq!((ios[1].op.as_str(), ios[1].value), ("Write", 2));
        let p = psi("some avg10=1.50 avg60=0.00 avg300=0.00 total=123\nfull avg10=0.00 avg60=0.25 avg300=0.00 total=7\n");
        assert_eq!((p.some.avg10, p.some.total, p.full.avg60), (1.5, 123, 0.25));
        let (kernel, user) = usage_all("cpu user system\n0 100 200\n1 300 400\n");
        assert_eq!((kernel, user), (vec![200, 400], vec![100, 300]));
        assert_eq!(page_size_name("hugepages-2048kB").unwrap(), "2MB");
        assert_eq!(page_size_name("hugepages-1048576kB").unwrap(), "1GB");
        assert_eq!(page_size_name("hugepages-64kB").unwrap(), "64KB");
    }
}
