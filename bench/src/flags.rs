//! Command-line flags of the bench binaries: `--name value` or `--name=value`, parsed by hand (a
//! dozen flags do not justify a parser crate in a tool whose build we want fast), plus the value
//! parsers they share: numbers, durations (`10ms`, `1.5s`) and rates.

use std::str::FromStr;
use std::time::Duration;

/// Walks the arguments one flag at a time.
pub struct Flags {
    args: std::vec::IntoIter<String>,
    /// The value given inline with the current flag (`--rate=5000`).
    inline: Option<String>,
    flag: String,
}

impl Flags {
    pub fn new(args: impl IntoIterator<Item = String>) -> Self {
        Flags {
            args: args.into_iter().collect::<Vec<_>>().into_iter(),
            inline: None,
            flag: String::new(),
        }
    }

    /// The next flag name (`--rate`), or `None` at the end. A bare word is returned as is, for the
    /// caller to reject or use as a subcommand.
    pub fn next_flag(&mut self) -> Option<String> {
        let arg = self.args.next()?;
        match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => {
                self.flag = f.to_string();
                self.inline = Some(v.to_string());
            }
            _ => {
                self.flag = arg;
                self.inline = None;
            }
        }
        Some(self.flag.clone())
    }

    /// The value of the current flag.
    pub fn value(&mut self) -> Result<String, String> {
        self.inline
            .take()
            .or_else(|| self.args.next())
            .ok_or_else(|| format!("{} needs a value", self.flag))
    }

    /// The value of the current flag, parsed.
    pub fn parse<T: FromStr>(&mut self) -> Result<T, String> {
        let v = self.value()?;
        v.parse()
            .map_err(|_| format!("{}: not a valid value: {v}", self.flag))
    }

    /// A strictly positive number.
    pub fn positive<T: FromStr + PartialOrd + Default>(&mut self) -> Result<T, String> {
        let v = self.value()?;
        match v.parse::<T>() {
            Ok(n) if n > T::default() => Ok(n),
            _ => Err(format!("{}: not a positive number: {v}", self.flag)),
        }
    }

    /// A duration such as `10ms`, `1.5s`, `250us`, `2m` (a bare number is seconds).
    pub fn duration(&mut self) -> Result<Duration, String> {
        let v = self.value()?;
        parse_duration(&v).map_err(|e| format!("{}: {e}", self.flag))
    }

    /// A duration flag whose bare number means milliseconds (`--delay-ms 10`).
    pub fn millis(&mut self) -> Result<Duration, String> {
        let v: u64 = self.parse()?;
        Ok(Duration::from_millis(v))
    }
}

/// `10ms`, `1.5s`, `250us`, `2m`, `90` (seconds). Negative, NaN or over a day is an error.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    const DAY_S: f64 = 86_400.0;
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {v:?} (e.g. 10ms, 1.5s)"))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("unknown unit in {v:?} (ns, us, ms, s, m)")),
    };
    let secs = n * scale;
    if !(0.0..=DAY_S).contains(&secs) {
        return Err(format!("duration out of range: {v:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(a: &[&str]) -> Flags {
        Flags::new(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn inline_and_separate_values() {
        let mut f = flags(&["--rate=5", "--duration", "2s", "run"]);
        assert_eq!(f.next_flag().as_deref(), Some("--rate"));
        assert_eq!(f.positive::<u32>(), Ok(5));
        assert_eq!(f.next_flag().as_deref(), Some("--duration"));
        assert_eq!(f.duration(), Ok(Duration::from_secs(2)));
        assert_eq!(f.next_flag().as_deref(), Some("run"));
        assert_eq!(f.next_flag(), None);
    }

    #[test]
    fn missing_and_bad_values() {
        let mut f = flags(&["--rate"]);
        f.next_flag();
        assert!(f.value().is_err());
        let mut f = flags(&["--rate", "0"]);
        f.next_flag();
        assert!(f.positive::<u32>().is_err());
        let mut f = flags(&["--n", "x"]);
        f.next_flag();
        assert!(f.parse::<u32>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
