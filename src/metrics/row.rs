//! A CSV row formatted into one reused buffer. `requests.csv` gets a row per request, millions per run:
//! twenty `String`s a row and the float formatter were a tenth of a run's time.

use std::fmt::Write;

/// Fields of one row, back to back in `buf`; `ends[i]` is where field `i` ends.
#[derive(Debug, Default)]
pub struct RowBuf {
    buf: String,
    ends: Vec<usize>,
}

/// 2^53: integers below it are exact in an f64.
const EXACT_F64: u64 = 1 << 53;

impl RowBuf {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    fn end(&mut self) {
        self.ends.push(self.buf.len());
    }

    pub fn int(&mut self, v: impl std::fmt::Display) {
        write!(self.buf, "{v}").expect("writing to a String cannot fail");
        self.end();
    }

    pub fn str(&mut self, s: &str) {
        self.buf.push_str(s);
        self.end();
    }

    pub fn empty(&mut self) {
        self.end();
    }

    /// A float with 6 decimals, as `format!("{v:.6}")`.
    pub fn f6(&mut self, v: f64) {
        write!(self.buf, "{v:.6}").expect("writing to a String cannot fail");
        self.end();
    }

    /// `ns` nanoseconds in seconds with 6 decimals, byte for byte what `format!("{:.6}", ns as f64 / 1e9)`
    /// writes (how times were always written), from integers. Rounding to microseconds can differ only
    /// at a tie (ns ending in 500, where the float's own error decides): an f64 of at most 2^53 ns is off
    /// by far less than the 1 ns that separates any other value from a rounding boundary. Ties and larger
    /// values take the float path.
    pub fn secs_ns(&mut self, ns: u64) {
        if ns % 1000 == 500 || ns >= EXACT_F64 {
            return self.f6(ns as f64 / 1e9);
        }
        let us = (ns + 500) / 1000;
        write!(self.buf, "{}.{:06}", us / 1_000_000, us % 1_000_000)
            .expect("writing to a String cannot fail");
        self.end();
    }

    /// The fields, for `csv::Writer::write_record`.
    pub fn fields(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&e| {
            let f = &self.buf.as_bytes()[start..e];
            start = e;
            f
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(f: impl FnOnce(&mut RowBuf)) -> String {
        let mut r = RowBuf::default();
        f(&mut r);
        let v: Vec<&[u8]> = r.fields().collect();
        assert_eq!(v.len(), 1);
        String::from_utf8(v[0].to_vec()).unwrap()
    }

    #[test]
    fn fields_split_where_they_ended() {
        let mut r = RowBuf::default();
        r.int(42u64);
        r.empty();
        r.str("finished");
        r.secs_ns(1_500_000_000);
        let v: Vec<&[u8]> = r.fields().collect();
        assert_eq!(v, vec![&b"42"[..], b"", b"finished", b"1.500000"]);
        r.clear();
        assert_eq!(r.fields().count(), 0);
    }

    #[test]
    fn seconds_at_ties_and_edges_match_the_float_formatter() {
        for ns in [
            0,
            1,
            499,
            500,
            501,
            999,
            1_000,
            1_500,
            2_500,
            999_999_499,
            999_999_500,
            999_999_501,
            123_456_789_012_345,
            EXACT_F64 - 1,
            EXACT_F64,
            EXACT_F64 + 1,
            u64::MAX,
        ] {
            assert_eq!(
                one(|r| r.secs_ns(ns)),
                format!("{:.6}", ns as f64 / 1e9),
                "{ns}"
            );
        }
    }

    proptest! {
        /// Over the whole range a run can reach (2^53 ns is 104 days) and beyond.
        #[test]
        fn seconds_match_the_float_formatter(ns in any::<u64>(), small in 0u64..10_000_000_000_000) {
            for v in [ns, small, ns >> 11, (small / 1000) * 1000 + 500] {
                prop_assert_eq!(one(|r| r.secs_ns(v)), format!("{:.6}", v as f64 / 1e9));
            }
        }
    }
}
