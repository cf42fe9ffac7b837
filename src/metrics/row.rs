//! A CSV row formatted into one reused buffer. `requests.csv` gets a row per request, millions per run:
//! twenty `String`s a row and the float formatter were a tenth of a run's time, and the CSV writer's
//! per-field quoting scan most of the rest. Every field here is a number or a fixed name that never needs
//! quoting (`str` checks this in debug builds), so a row is written as its bytes, commas included.

use std::io::Write;

/// Fields of one row, comma-separated in `buf`; `ends[i]` is where field `i` ends.
#[derive(Debug, Default)]
pub struct RowBuf {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

/// Integers written in decimal without the formatting machinery (a quarter of the time of writing a row).
pub trait Decimal: Copy {
    fn write_decimal(self, buf: &mut Vec<u8>);
}

impl Decimal for u64 {
    fn write_decimal(self, buf: &mut Vec<u8>) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = self;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        buf.extend_from_slice(&digits[i..]);
    }
}

impl Decimal for u32 {
    fn write_decimal(self, buf: &mut Vec<u8>) {
        (self as u64).write_decimal(buf)
    }
}

impl Decimal for usize {
    fn write_decimal(self, buf: &mut Vec<u8>) {
        (self as u64).write_decimal(buf)
    }
}

impl Decimal for i64 {
    fn write_decimal(self, buf: &mut Vec<u8>) {
        if self < 0 {
            buf.push(b'-');
        }
        self.unsigned_abs().write_decimal(buf)
    }
}

/// 2^53: integers below it are exact in an f64.
const EXACT_F64: u64 = 1 << 53;

impl RowBuf {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// Starts a field: a comma after the previous one.
    fn start(&mut self) {
        if !self.ends.is_empty() {
            self.buf.push(b',');
        }
    }

    fn end(&mut self) {
        self.ends.push(self.buf.len());
    }

    /// An integer, as `format!("{v}")` writes it.
    pub fn int(&mut self, v: impl Decimal) {
        self.start();
        v.write_decimal(&mut self.buf);
        self.end();
    }

    /// A name. It must need no CSV quoting: no comma, quote or line break.
    pub fn str(&mut self, s: &str) {
        debug_assert!(
            !s.contains([',', '"', '\n', '\r']),
            "{s:?} would need CSV quoting"
        );
        self.start();
        self.buf.extend_from_slice(s.as_bytes());
        self.end();
    }

    pub fn empty(&mut self) {
        self.start();
        self.end();
    }

    /// A float with 6 decimals, as `format!("{v:.6}")`.
    pub fn f6(&mut self, v: f64) {
        self.start();
        write!(self.buf, "{v:.6}").expect("writing to a Vec cannot fail");
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
        self.start();
        let us = (ns + 500) / 1000;
        (us / 1_000_000).write_decimal(&mut self.buf);
        self.buf.push(b'.');
        let frac = us % 1_000_000;
        let mut digits = [b'0'; 6];
        let mut f = frac;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        self.buf.extend_from_slice(&digits);
        self.end();
    }

    /// The row as a CSV line, newline-terminated, as `csv::Writer` writes a record of two or more fields
    /// none of which needs quoting. Ends the row: `clear` before the next.
    pub fn line(&mut self) -> &[u8] {
        debug_assert!(self.ends.len() >= 2, "csv quotes a lone empty field");
        self.buf.push(b'\n');
        &self.buf
    }

    /// The fields.
    #[cfg(test)]
    fn fields(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&e| {
            let f = &self.buf[start..e];
            start = e + 1;
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
        assert_eq!(r.line(), b"42,,finished,1.500000\n");
        r.clear();
        assert_eq!(r.fields().count(), 0);
    }

    /// A line is what the csv crate writes for the same fields.
    #[test]
    fn lines_match_the_csv_writer() {
        let mut r = RowBuf::default();
        let mut w = csv::Writer::from_writer(Vec::new());
        for row in 0..3u64 {
            r.clear();
            r.int(row);
            r.empty();
            r.str("finished");
            r.f6(0.25 * row as f64);
            r.secs_ns(row * 1_234_567_891);
            r.empty();
            let fields: Vec<Vec<u8>> = r.fields().map(|f| f.to_vec()).collect();
            w.write_record(&fields).unwrap();
            w.flush().unwrap();
            let ours = r.line().to_vec();
            let theirs = w.get_ref().clone();
            assert!(
                theirs.ends_with(&ours),
                "{:?}",
                String::from_utf8_lossy(&ours)
            );
        }
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
        /// Integers as `Display` writes them, every width and sign.
        #[test]
        fn integers_match_display(u in any::<u64>(), i in any::<i64>(), w in any::<u32>(), k in 0u32..64) {
            prop_assert_eq!(one(|r| r.int(u)), u.to_string());
            prop_assert_eq!(one(|r| r.int(u >> k)), (u >> k).to_string());
            prop_assert_eq!(one(|r| r.int(i)), i.to_string());
            prop_assert_eq!(one(|r| r.int(i >> k)), (i >> k).to_string());
            prop_assert_eq!(one(|r| r.int(w)), w.to_string());
            prop_assert_eq!(one(|r| r.int(w as usize)), w.to_string());
            prop_assert_eq!(one(|r| r.int(i64::MIN)), i64::MIN.to_string());
        }

        /// Over the whole range a run can reach (2^53 ns is 104 days) and beyond.
        #[test]
        fn seconds_match_the_float_formatter(ns in any::<u64>(), small in 0u64..10_000_000_000_000) {
            for v in [ns, small, ns >> 11, (small / 1000) * 1000 + 500] {
                prop_assert_eq!(one(|r| r.secs_ns(v)), format!("{:.6}", v as f64 / 1e9));
            }
        }
    }
}
