//! Error injection by rate for the mock: `429:0.01,500:0.005,503:0.005,reset:0.001,stall:0.001`
//! parsed into cumulative probabilities, and one uniform draw per request picking the outcome.

/// What an injected fault does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Answer this HTTP status (4xx or 5xx) with an OpenAI-style error body.
    Status(u16),
    /// Close the connection without answering.
    Reset,
    /// Wait `--stall-ms` before answering normally.
    Stall,
}

impl Fault {
    /// The counter name in `/mock/stats`, e.g. `status_429`, `reset`, `stall`.
    pub fn name(self) -> String {
        match self {
            Fault::Status(code) => format!("status_{code}"),
            Fault::Reset => "reset".to_string(),
            Fault::Stall => "stall".to_string(),
        }
    }
}

/// Faults with the cumulative probability up to and including each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorRates {
    cumulative: Vec<(Fault, f64)>,
}

/// Most distinct faults in one `--error-rate`.
const FAULTS_MAX: usize = 32;

impl ErrorRates {
    /// `KIND:P,...` where KIND is a status in 400..=599, `reset` or `stall`, and P a probability;
    /// the probabilities sum to at most 1.
    pub fn parse(spec: &str) -> Result<ErrorRates, String> {
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (kind, p) = part
                .split_once(':')
                .ok_or_else(|| format!("error rate {part:?}: expected KIND:PROBABILITY"))?;
            let fault = match kind {
                "reset" => Fault::Reset,
                "stall" => Fault::Stall,
                code => match code.parse::<u16>() {
                    Ok(c) if (400..=599).contains(&c) => Fault::Status(c),
                    _ => {
                        return Err(format!(
                            "error rate {part:?}: KIND is a status 400..=599, reset or stall"
                        ))
                    }
                },
            };
            let p: f64 = match p.parse() {
                Ok(p) if (0.0..=1.0).contains(&p) => p,
                _ => return Err(format!("error rate {part:?}: probability not in 0..=1")),
            };
            if cumulative.iter().any(|(f, _)| *f == fault) {
                return Err(format!("error rate {part:?}: {kind} given twice"));
            }
            total += p;
            cumulative.push((fault, total));
        }
        if total > 1.0 + 1e-9 {
            return Err(format!("error rates sum to {total}, above 1"));
        }
        if cumulative.len() > FAULTS_MAX {
            return Err(format!("at most {FAULTS_MAX} error kinds"));
        }
        Ok(ErrorRates { cumulative })
    }

    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// The faults configured, in the order given.
    pub fn faults(&self) -> impl Iterator<Item = Fault> + '_ {
        self.cumulative.iter().map(|(f, _)| *f)
    }

    /// The fault for a uniform draw `u` in [0, 1), or `None` for a normal answer.
    pub fn pick(&self, u: f64) -> Option<Fault> {
        self.cumulative
            .iter()
            .find(|(_, upto)| u < *upto)
            .map(|(f, _)| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_picks_by_cumulative_rate() {
        let r = ErrorRates::parse("429:0.01,500:0.005,503:0.005,reset:0.001,stall:0.001").unwrap();
        assert_eq!(r.pick(0.0), Some(Fault::Status(429)));
        assert_eq!(r.pick(0.0099), Some(Fault::Status(429)));
        assert_eq!(r.pick(0.012), Some(Fault::Status(500)));
        assert_eq!(r.pick(0.0175), Some(Fault::Status(503)));
        assert_eq!(r.pick(0.0205), Some(Fault::Reset));
        assert_eq!(r.pick(0.0215), Some(Fault::Stall));
        assert_eq!(r.pick(0.5), None);
        assert_eq!(r.faults().count(), 5);
        assert_eq!(Fault::Status(429).name(), "status_429");
        assert!(ErrorRates::parse("").unwrap().is_empty());
        assert_eq!(
            ErrorRates::parse("reset:1").unwrap().pick(0.999),
            Some(Fault::Reset)
        );
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "429",
            "200:0.1",
            "600:0.1",
            "boom:0.1",
            "500:1.5",
            "500:-0.1",
            "500:x",
            "500:0.6,503:0.6",
            "500:0.1,500:0.1",
        ] {
            assert!(ErrorRates::parse(bad).is_err(), "{bad}");
        }
    }
}
