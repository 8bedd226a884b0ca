//! The pipeline grammar: a [`Pipeline`] is a list of [`Stage`]s `SPEC:keep` (text form
//! `hadamard512+sign:1000,int8:100,exact:10`), each scored by a [`Scorer`]; [`SearchParams`]
//! are the query-time settings.
//!
//! The first stage scans every vector; each later stage rescores only the survivors of the
//! one before, and `exact` rescores with the original float vectors. It is faiss's
//! `IndexRefine` with a `k_factor`, written as a list. The stage runner (`search.rs`) runs it.

use crate::encode::EncoderSpec;
use crate::error::{invalid, Error, Result};
use std::fmt;
use std::str::FromStr;

/// What scores a stage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scorer {
    /// The original float vectors.
    Exact,
    /// Codes of an encoder.
    Codes(EncoderSpec),
}

/// One stage: a scorer and how many hits survive it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stage {
    /// What scores this stage.
    pub scorer: Scorer,
    /// How many hits it passes on.
    pub keep: usize,
    /// Lists probed per query, for a partitioned encoder (`ivf<nlist>/<nprobe>+...`, first
    /// stage only); `None` otherwise.
    pub nprobe: Option<usize>,
    /// `rabitq<bits>:bound` (first stage): instead of a fixed keep, every code the RaBitQ
    /// error bound cannot rule out of the next stage's top; the confidence constant `eps0` in
    /// hundredths (`:bound` is 1.9, `:bound=3.5` 3.5). `keep` is then `usize::MAX`.
    pub bound: Option<u16>,
}

impl Stage {
    /// A stage without partition.
    pub fn new(scorer: Scorer, keep: usize) -> Stage {
        Stage {
            scorer,
            keep,
            nprobe: None,
            bound: None,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scorer {
            Scorer::Codes(spec) => spec.fmt_probing(f, self.nprobe)?,
            Scorer::Exact => f.write_str("exact")?,
        }
        match self.bound {
            Some(190) => f.write_str(":bound"),
            Some(e) => write!(f, ":bound={}", e as f32 / 100.0),
            None => write!(f, ":{}", self.keep),
        }
    }
}

/// Stages run in order; text form `hadamard512+sign:1000,int8:100,exact:10`.
///
/// ```
/// use rewa::Pipeline;
/// let p: Pipeline = "hadamard256+sign:1000,exact:10".parse().unwrap();
/// assert_eq!(p.stages().len(), 2);
/// assert_eq!(p.to_string(), "hadamard256+sign:1000,exact:10");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pipeline {
    /// At least one stage; every `keep` at least 1 and none larger than the one before.
    stages: Vec<Stage>,
}

impl Pipeline {
    /// Checks and wraps `stages`: at least one, every `keep >= 1`, and no stage keeping more
    /// than the stage before it.
    pub fn new(stages: Vec<Stage>) -> Result<Pipeline> {
        if stages.is_empty() {
            return invalid!("empty pipeline (try hadamard256+sign:1000,exact:10)");
        }
        for (i, st) in stages.iter().enumerate() {
            let nlist = match &st.scorer {
                Scorer::Codes(spec) => spec.ivf,
                Scorer::Exact => None,
            };
            match (nlist, st.nprobe) {
                (None, None) => {}
                (Some(_), None) => {
                    return invalid!(
                        "pipeline stage {st}: a partitioned stage names the lists it probes, e.g. ivf1024/16+pq32:100"
                    )
                }
                (None, Some(_)) => {
                    return invalid!("pipeline stage {st}: lists to probe without ivf<nlist>")
                }
                (Some(_), Some(_)) if i > 0 => {
                    return invalid!(
                        "pipeline stage {st}: only the first stage can be partitioned (later stages rescore the survivors by id)"
                    )
                }
                (Some(nlist), Some(p)) if p > nlist => {
                    return invalid!("pipeline stage {st}: probes {p} of only {nlist} lists")
                }
                (Some(_), Some(_)) => {}
            }
            if let Some(e) = st.bound {
                let rabitq = matches!(&st.scorer, Scorer::Codes(s) if matches!(s.quantizer, crate::encode::QuantizerSpec::Rabitq { .. }));
                if !rabitq || i > 0 || stages.len() == 1 {
                    return invalid!(
                        "pipeline stage {st}: only a first stage of rabitq<bits> codes followed by a rerank can keep what its error bound requires (e.g. rabitq1:bound,exact:10)"
                    );
                }
                if e == 0 || st.keep != usize::MAX {
                    return invalid!("pipeline stage {st}: the bound's constant must be > 0");
                }
            }
            if st.keep == 0 {
                return invalid!(
                    "pipeline stage {}:{}: keep must be >= 1",
                    st.scorer,
                    st.keep
                );
            }
            if let Some(prev) = i.checked_sub(1).map(|j| stages[j].keep) {
                if st.keep > prev {
                    return invalid!(
                        "pipeline stage {}:{} keeps {}, more than the {prev} before it",
                        st.scorer,
                        st.keep,
                        st.keep
                    );
                }
            }
        }
        Ok(Pipeline { stages })
    }
    /// A one-stage pipeline scanning `spec`'s codes (`keep` is raised to 1 if 0).
    pub fn single(spec: EncoderSpec, keep: usize) -> Self {
        Pipeline {
            stages: vec![Stage {
                nprobe: spec.ivf.map(|n| n.min(16)),
                scorer: Scorer::Codes(spec),
                keep: keep.max(1),
                bound: None,
            }],
        }
    }
    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }
    /// Checks the pipeline for a search returning `k` hits: last `keep >= k`.
    pub fn check(&self, k: usize) -> Result<()> {
        if k == 0 {
            return invalid!("k must be at least 1");
        }
        let last = self.stages.last().map_or(0, |s| s.keep);
        if last < k {
            return invalid!("pipeline {self}: the last stage keeps {last}, fewer than k = {k}");
        }
        Ok(())
    }
    /// The number of hits the last stage returns.
    pub fn final_keep(&self) -> usize {
        self.stages.last().map_or(0, |s| s.keep)
    }
    /// The distinct encoder specs the pipeline scores with, in first-use order.
    pub fn encoders(&self) -> Vec<&EncoderSpec> {
        let mut out: Vec<&EncoderSpec> = Vec::new();
        for s in &self.stages {
            if let Scorer::Codes(spec) = &s.scorer {
                if !out.contains(&spec) {
                    out.push(spec);
                }
            }
        }
        out
    }
    /// `true` if some stage scores with the original vectors.
    pub fn needs_vectors(&self) -> bool {
        self.stages.iter().any(|s| s.scorer == Scorer::Exact)
    }
    /// The same stages with the `keep` of each replaced by `keeps` (for tuning).
    pub fn with_keeps(&self, keeps: &[usize]) -> Result<Pipeline> {
        if keeps.len() != self.stages.len() {
            return invalid!(
                "pipeline {self} has {} stages, {} keeps given",
                self.stages.len(),
                keeps.len()
            );
        }
        Pipeline::new(
            self.stages
                .iter()
                .zip(keeps)
                .map(|(s, &keep)| Stage {
                    scorer: s.scorer.clone(),
                    keep: if s.bound.is_some() { s.keep } else { keep },
                    nprobe: s.nprobe,
                    bound: s.bound,
                })
                .collect(),
        )
    }
    /// Lists the first stage probes, if it is partitioned.
    pub fn nprobe(&self) -> Option<usize> {
        self.stages[0].nprobe
    }
    /// The lists of the first stage, if it is partitioned, and its `nlist`.
    pub fn nlist(&self) -> Option<usize> {
        match &self.stages[0].scorer {
            Scorer::Codes(spec) => spec.ivf,
            Scorer::Exact => None,
        }
    }
    /// The same stages with the first probing `nprobe` lists (for tuning); an error unless it
    /// is partitioned.
    pub fn with_nprobe(&self, nprobe: usize) -> Result<Pipeline> {
        if self.nprobe().is_none() {
            return invalid!(
                "pipeline {self}: the first stage is not partitioned (ivf<nlist>/<nprobe>+...)"
            );
        }
        let mut stages = self.stages.clone();
        stages[0].nprobe = Some(nprobe);
        Pipeline::new(stages)
    }
}

impl fmt::Display for Scorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scorer::Exact => f.write_str("exact"),
            Scorer::Codes(s) => write!(f, "{s}"),
        }
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.stages.iter().map(|s| s.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Pipeline {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return invalid!("empty pipeline (try hadamard256+sign:1000,exact:10)");
        }
        let mut stages = Vec::new();
        for part in crate::encode::EncoderSpec::split_outside_quotes(s, ',')
            .into_iter()
            .map(str::trim)
        {
            let Some((scorer, keep)) =
                crate::encode::EncoderSpec::rsplit_once_outside_quotes(part, ':')
            else {
                return invalid!(
                    "pipeline stage {part:?} has no ':keep' (e.g. hadamard256+sign:1000)"
                );
            };
            let keep = keep.trim();
            let bound = match keep.strip_prefix("bound") {
                None => None,
                Some("") => Some(190u16),
                Some(e) => match e.strip_prefix('=').map(|e| e.parse::<f32>()) {
                    Some(Ok(e)) if e > 0.0 && e <= 100.0 => Some((e * 100.0).round() as u16),
                    _ => {
                        return invalid!(
                            "pipeline stage {part:?}: bound takes a confidence constant from 0 to 100, e.g. :bound or :bound=3.5"
                        )
                    }
                },
            };
            let keep: usize = match (bound, keep.parse()) {
                (Some(_), _) => usize::MAX,
                (None, Ok(k)) if k >= 1 => k,
                _ => return invalid!("pipeline stage {part:?}: keep must be a whole number >= 1, or bound for rabitq<bits> codes"),
            };
            let (scorer, nprobe) = match scorer.trim() {
                "exact" => (Scorer::Exact, None),
                other => {
                    let (spec, nprobe) = EncoderSpec::parse_probing(other)?;
                    (Scorer::Codes(spec), nprobe)
                }
            };
            stages.push(Stage {
                scorer,
                keep,
                nprobe,
                bound,
            });
        }
        Pipeline::new(stages).map_err(|e| match e {
            Error::InvalidInput(m) => Error::InvalidInput(format!("{m} (in {s:?})")),
            other => other,
        })
    }
}

impl serde::Serialize for Pipeline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pipeline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Query-time settings.
#[derive(Clone, Debug)]
pub struct SearchParams {
    /// Hits returned per query.
    pub k: usize,
    /// The stages to run; `None` uses the index's default pipeline.
    pub pipeline: Option<Pipeline>,
    /// Only these rows may be returned (a pre-filter: the hits are the best `k` of them, or
    /// all of them when fewer); `None` searches every row.
    pub filter: Option<std::sync::Arc<crate::rows::RowFilter>>,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            k: 10,
            pipeline: None,
            filter: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Metric;

    #[test]
    fn pipelines_round_trip_and_reject_bad_text() {
        for s in [
            "exact:10",
            "hadamard512+sign:1000,int8:100,exact:10",
            "pca64:50",
        ] {
            let p: Pipeline = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(p.to_string().parse::<Pipeline>().unwrap(), p);
        }
        for s in [
            "",
            "sign",
            "sign:0",
            "sign:x",
            "sign:10,exact:20",
            "bogus:10",
            "exact:10,,sign:5",
        ] {
            assert!(
                matches!(s.parse::<Pipeline>(), Err(Error::InvalidInput(_))),
                "{s:?} parsed"
            );
        }
        let p: Pipeline = "sign:100,exact:5".parse().unwrap();
        assert!(matches!(p.check(10), Err(Error::InvalidInput(_))));
        assert!(matches!(p.check(0), Err(Error::InvalidInput(_))));
        assert!(p.check(5).is_ok());
    }

    #[test]
    fn pipelines_are_validated_in_one_constructor() {
        let st = |keep| Stage::new(Scorer::Exact, keep);
        assert!(Pipeline::new(vec![]).is_err());
        assert!(Pipeline::new(vec![st(0)]).is_err());
        assert!(Pipeline::new(vec![st(10), st(20)]).is_err());
        let p = Pipeline::new(vec![st(20), st(10)]).unwrap();
        assert!(p
            .with_keeps(&[5, 10])
            .unwrap_err()
            .to_string()
            .contains("more than"));
        assert!(p.with_keeps(&[5]).is_err());
        // partitioned stages: first only, nprobe given and at most nlist; round trips
        for ok in [
            "ivf64/8+pq16:100,exact:10",
            "ivf1024/16+flat:10",
            "ivf16/16+hadamard256+sign:50,int8:20",
            "ivf8/1+opq16+pq16:100,ivf8+opq16+pq16:50",
        ] {
            match ok.parse::<Pipeline>() {
                Ok(p) => assert_eq!(p.to_string(), ok),
                Err(e) => assert!(ok.contains(",ivf8+"), "{ok}: {e}"),
            }
        }
        for (bad, why) in [
            ("ivf64+pq16:100", "names the lists it probes"),
            ("ivf64/65+pq16:100", "probes 65 of only 64"),
            ("ivf64/0+pq16:100", ">= 1"),
            ("ivf64/x+pq16:100", ">= 1"),
            ("exact:100,ivf64/8+pq16:10", "only the first stage"),
            ("hadamard64+ivf64/8+sign:10", "first token"),
        ] {
            let e = bad.parse::<Pipeline>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let p: Pipeline = "ivf64/8+pq16:100,exact:10".parse().unwrap();
        assert_eq!((p.nlist(), p.nprobe()), (Some(64), Some(8)));
        assert_eq!(
            p.with_nprobe(32).unwrap().to_string(),
            "ivf64/32+pq16:100,exact:10"
        );
        assert!(p.with_nprobe(65).is_err());
        assert_eq!(p.with_keeps(&[50, 5]).unwrap().nprobe(), Some(8));
        assert_eq!(Metric::Ip.score(-0.5), 0.5);
        assert_eq!(Metric::Cosine.score(-0.5), 0.5);
        assert_eq!(Metric::L2.score(2.0), 2.0);
    }

    /// Pipelines split stages and keeps outside the quotes of a learned encoder's path.
    #[test]
    fn quoted_learned_paths_round_trip_in_pipelines() {
        let text = "learned=\"m/a+b,c:d\"+sign:100,learned=\"m/a+b,c:d\"+int8:20,exact:10";
        let p: Pipeline = text.parse().unwrap();
        assert_eq!(p.stages().len(), 3);
        assert_eq!(p.stages()[0].keep, 100);
        match &p.stages()[1].scorer {
            Scorer::Codes(s) => {
                assert_eq!(
                    s.transforms[0],
                    crate::encode::TransformSpec::Learned {
                        path: "m/a+b,c:d".into()
                    }
                );
                assert_eq!(s.quantizer, crate::encode::QuantizerSpec::Int8);
            }
            other => panic!("stage 1 is {other:?}"),
        }
        assert_eq!(p.to_string(), text);
        assert_eq!(p.to_string().parse::<Pipeline>().unwrap(), p);
    }
}
