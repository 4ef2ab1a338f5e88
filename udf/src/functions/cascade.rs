//! The cascades of `llm_filter` and `llm_classify`: a cheap proxy answers
//! the values it is sure about, the model the rest.
//!
//! On when the session sets `lakelink.llm.cascade_target` (a fraction such
//! as `0.95`; `0`, the default, is off). The proxy is the cosine similarity
//! of a value's embedding with the condition's. In each process, the first
//! [`SAMPLE`] distinct values a query's filter meets are asked of the model;
//! on that sample two thresholds are chosen: values at or below `no_until`
//! are no, values at or above `yes_from` are yes, the widest such band whose
//! answers disagree with the model's on at most `1 - target` of the sample,
//! and on at most `1 - target` of each side's own values.
//! Values in between go to the model. When no band meets the target (the
//! similarity says little about the condition) the cascade refuses: every
//! value goes to the model. Each batch's proxy answers, the thresholds and
//! the sample's agreement are a trail line (`backend` `proxy`).
//!
//! `llm_classify`'s proxy is the label whose embedding is most similar to
//! the value's, and its score the lead of that similarity over the next
//! label's: on the sample, the lowest lead from which the proxy's label is
//! the model's on the target's share (overall and of the values it decides)
//! is chosen; values with a smaller lead go to the model.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::common::Result;
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::trail::{self, ModelCall};

use super::cosine;

/// Distinct values of the sample, per query, condition and process.
pub const SAMPLE: usize = 50;

/// What the sample decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Values at or below this similarity are no (`-inf`: none).
    pub no_until: f64,
    /// Values at or above this similarity are yes (`+inf`: none).
    pub yes_from: f64,
    /// The share of the sample on which the proxy's answers (where it
    /// answers) agree with the model's.
    pub agreement: f64,
}

impl Thresholds {
    /// The proxy's answer for a similarity, if it is sure.
    pub fn decide(&self, similarity: f64) -> Option<bool> {
        if similarity >= self.yes_from {
            Some(true)
        } else if similarity <= self.no_until {
            Some(false)
        } else {
            None
        }
    }

    /// Whether the proxy answers nothing.
    pub fn refused(&self) -> bool {
        self.no_until == f64::NEG_INFINITY && self.yes_from == f64::INFINITY
    }
}

/// The widest band of the sample (similarity, the model's answer) whose
/// proxy answers disagree with the model's on at most `1 - target` of it.
pub fn choose(sample: &[(f64, bool)], target: f64) -> Thresholds {
    choose_band(sample, target, true)
}

/// The lowest score from which the proxy's answer is taken, for a sample
/// of (score, whether the model gave the proxy's answer): as [`choose`],
/// with an upper side only.
pub fn choose_upper(sample: &[(f64, bool)], target: f64) -> Thresholds {
    choose_band(sample, target, false)
}

fn choose_band(sample: &[(f64, bool)], target: f64, lower_side: bool) -> Thresholds {
    let mut sorted = sample.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = sorted.len();
    let allowed = ((1.0 - target) * n as f64 + 1e-9).floor() as usize;
    // yes_below[i]: model yes among the i least similar; no_from[j]: model no from j on.
    let mut yes_below = vec![0; n + 1];
    for i in 0..n {
        yes_below[i + 1] = yes_below[i] + usize::from(sorted[i].1);
    }
    let no_from = |j: usize| (n - j) - (yes_below[n] - yes_below[j]);
    // The band deciding the most values; of those, the one with the fewest errors.
    let (mut best, mut best_errors, mut band) = (0, 0, (0, n));
    for i in 0..=if lower_side { n } else { 0 } {
        for j in i..=n {
            let (decided, errors) = (i + (n - j), yes_below[i] + no_from(j));
            let better = decided > best || (decided == best && errors < best_errors);
            // Each side must also be right on the target's share of its own
            // values: a small band of coin flips may not spend the budget.
            let sure = |size: usize, wrong: usize| size == 0 || (size - wrong) as f64 >= target * size as f64 - 1e-9;
            let sure = sure(i, yes_below[i]) && sure(n - j, no_from(j));
            // A threshold may not split values of equal similarity.
            let clean_no = i == 0 || i == n || sorted[i - 1].0 < sorted[i].0;
            let clean_yes = j == 0 || j == n || sorted[j - 1].0 < sorted[j].0;
            if better && sure && errors <= allowed && clean_no && clean_yes {
                (best, best_errors, band) = (decided, errors, (i, j));
            }
        }
    }
    let (i, j) = band;
    let errors = yes_below[i] + no_from(j);
    Thresholds {
        no_until: if i == 0 { f64::NEG_INFINITY } else { sorted[i - 1].0 },
        yes_from: if j == n { f64::INFINITY } else { sorted[j].0 },
        agreement: if n == 0 { 1.0 } else { 1.0 - errors as f64 / n as f64 },
    }
}

/// One query's cascade for one condition in this process.
#[derive(Default)]
pub struct Cascade {
    /// The sample so far, until the thresholds are chosen.
    sample: tokio::sync::Mutex<Vec<(f64, bool)>>,
    thresholds: OnceLock<Thresholds>,
}

/// Cascades remembered per process; older ones are forgotten.
const REMEMBERED: usize = 256;

/// The cascade of `query_id`'s filter on `condition` in this process.
pub fn cascade(query_id: &str, condition: &str) -> Arc<Cascade> {
    type Cascades = Mutex<VecDeque<(String, Arc<Cascade>)>>;
    static CASCADES: OnceLock<Cascades> = OnceLock::new();
    if query_id.is_empty() {
        return Arc::default();
    }
    let key = format!("{query_id}\u{0}{condition}");
    let mut all = CASCADES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = all.iter().find(|(k, _)| *k == key) {
        return c.clone();
    }
    if all.len() >= REMEMBERED {
        all.pop_front();
    }
    let c = Arc::new(Cascade::default());
    all.push_back((key, c.clone()));
    c
}

/// Answers `values` (distinct texts) of `llm_filter` on `condition`
/// through the cascade; `ask` asks the model for some of them. The proxy is
/// the similarity of each value to the condition: no below the band, yes
/// above it.
pub async fn filter<F, Fut>(
    options: &LlmOptions,
    condition: &str,
    values: Vec<String>,
    ask: F,
) -> Result<Vec<Option<bool>>>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Option<bool>>>>,
{
    let mut texts = values.clone();
    texts.push(condition.to_string());
    let mut vectors = engine::embeddings(options, "llm_filter", texts).await?;
    let Some(Some(wanted)) = vectors.pop() else { return ask(values).await };
    let similarity = vectors.iter().map(|v| v.as_deref().map_or(0.0, |v| cosine(v, &wanted))).collect();
    let proxy = Proxy { function: "llm_filter", key: condition.to_string(), score: similarity, two_sided: true };
    proxy.run(options, values, |_, yes| Some(yes), |_, model: &Option<bool>| *model, ask).await
}

/// Answers `values` of `llm_classify` into `labels` through the cascade.
/// The proxy is the label most similar to the value, taken where its
/// similarity leads the next label's by at least the sample's margin.
pub async fn classify<F, Fut>(
    options: &LlmOptions,
    labels: &[String],
    values: Vec<String>,
    ask: F,
) -> Result<Vec<Option<String>>>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Option<String>>>>,
{
    let mut texts = values.clone();
    texts.extend(labels.iter().cloned());
    let mut vectors = engine::embeddings(options, "llm_classify", texts).await?;
    let label_vectors: Option<Vec<Vec<f32>>> = vectors.split_off(values.len()).into_iter().collect();
    let Some(label_vectors) = label_vectors else { return ask(values).await };
    let (mut nearest, mut margin) = (Vec::new(), Vec::new());
    for v in &vectors {
        let mut sims: Vec<(f64, usize)> = match v {
            Some(v) => label_vectors.iter().enumerate().map(|(l, lv)| (cosine(v, lv), l)).collect(),
            None => vec![(0.0, 0)],
        };
        sims.sort_by(|a, b| b.0.total_cmp(&a.0));
        nearest.push(sims[0].1);
        margin.push(sims[0].0 - sims.get(1).map_or(sims[0].0, |s| s.0));
    }
    let proxy = Proxy { function: "llm_classify", key: labels.join("\u{0}"), score: margin, two_sided: false };
    let label = |i: usize| labels[nearest[i]].clone();
    proxy
        .run(options, values, |i, _| Some(label(i)), |i, model: &Option<String>| Some(*model == Some(label(i))), ask)
        .await
}

/// A proxy's score of each value of a batch.
struct Proxy {
    function: &'static str,
    /// What the cascade is of (the condition, the labels).
    key: String,
    score: Vec<f64>,
    /// Thresholds on both sides (`decide` gives no or yes), or above only.
    two_sided: bool,
}

impl Proxy {
    /// Answers the batch: `answer(i, side)` is the proxy's answer for value
    /// `i`, `agrees(i, model)` what the model's answer tells of the proxy on
    /// the sample (two-sided: the model's yes or no; one-sided: whether it
    /// gave the proxy's answer).
    async fn run<T, F, Fut>(
        self,
        options: &LlmOptions,
        values: Vec<String>,
        answer: impl Fn(usize, bool) -> T,
        agrees: impl Fn(usize, &T) -> Option<bool>,
        ask: F,
    ) -> Result<Vec<T>>
    where
        T: Clone,
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let cascade = cascade(&options.query_id, &format!("{}\u{0}{}", self.function, self.key));
        let mut out: Vec<Option<T>> = vec![None; values.len()];
        if cascade.thresholds.get().is_none() {
            let mut sample = cascade.sample.lock().await;
            if cascade.thresholds.get().is_none() {
                let room = SAMPLE.saturating_sub(sample.len());
                let picked: Vec<usize> = (0..values.len()).take(room).collect();
                let asked = ask(picked.iter().map(|&i| values[i].clone()).collect()).await?;
                for (&i, model) in picked.iter().zip(asked) {
                    if let Some(right) = agrees(i, &model) {
                        sample.push((self.score[i], right));
                    }
                    out[i] = Some(model);
                }
                if sample.len() >= SAMPLE {
                    let target = options.cascade_target;
                    let chosen = if self.two_sided { choose(&sample, target) } else { choose_upper(&sample, target) };
                    let _ = cascade.thresholds.set(chosen);
                }
            }
        }
        let thresholds = cascade.thresholds.get().copied();
        let mut decided = 0;
        let mut rest = Vec::new();
        for (i, slot) in out.iter_mut().enumerate().filter(|(_, slot)| slot.is_none()) {
            match thresholds.and_then(|t| t.decide(self.score[i])) {
                Some(side) => {
                    *slot = Some(answer(i, side));
                    decided += 1;
                }
                None => rest.push(i),
            }
        }
        if let Some(t) = thresholds {
            record(options, self.function, self.two_sided, decided, rest.len(), &t);
        }
        let asked = ask(rest.iter().map(|&i| values[i].clone()).collect()).await?;
        for (&i, model) in rest.iter().zip(asked) {
            out[i] = Some(model);
        }
        Ok(out.into_iter().map(|a| a.expect("every value answered")).collect())
    }
}

/// The trail line of one batch's proxy answers.
fn record(options: &LlmOptions, function: &str, two_sided: bool, decided: usize, to_model: usize, t: &Thresholds) {
    let mut call = ModelCall::now(&options.query_id, function, "proxy: embedding similarity", "proxy");
    call.rows = decided as u64;
    call.confidence = Some(t.agreement);
    call.outcome = if t.refused() {
        format!(
            "cascade refused: no similarity threshold agreed with the model on {:.0}% of its {SAMPLE}-value sample; \
             {to_model} values to the model",
            options.cascade_target * 100.0
        )
    } else if two_sided {
        format!(
            "cascade: the proxy decided {decided} values (no at similarity <= {:.3}, yes at >= {:.3}; the sample \
             agreed {:.1}%), {to_model} to the model",
            t.no_until,
            t.yes_from,
            t.agreement * 100.0
        )
    } else {
        format!(
            "cascade: the proxy decided {decided} values (the most similar label, where it leads the next by >= \
             {:.3}; the sample agreed {:.1}%), {to_model} to the model",
            t.yes_from,
            t.agreement * 100.0
        )
    };
    trail::record(options, &call);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_separable_sample_decides_everything() {
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64 / 50.0, i >= 30)).collect();
        let t = choose(&sample, 0.95);
        assert_eq!(t.agreement, 1.0);
        assert_eq!(t.decide(0.1), Some(false));
        assert_eq!(t.decide(0.9), Some(true));
        assert!(t.no_until < t.yes_from);
    }

    #[test]
    fn a_similarity_that_says_nothing_is_refused() {
        // Yes and no alternate whatever the similarity.
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64 / 50.0, i % 2 == 0)).collect();
        let t = choose(&sample, 0.95);
        assert!(t.refused(), "{t:?}");
        assert_eq!(t.decide(0.5), None);
    }

    #[test]
    fn of_equally_wide_bands_the_one_with_fewer_errors_wins() {
        // Every value of the sample is no: saying no to all is right, saying
        // yes to the two most similar would be two errors.
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64, false)).collect();
        let t = choose(&sample, 0.95);
        assert_eq!(t.agreement, 1.0);
        assert_eq!(t.decide(49.0), Some(false));
    }

    #[test]
    fn one_sided_thresholds_take_the_proxy_only_above() {
        // The proxy's label is the model's where its lead is 25 or more.
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64, i >= 25)).collect();
        let t = choose_upper(&sample, 0.95);
        assert_eq!((t.decide(30.0), t.decide(10.0)), (Some(true), None), "{t:?}");
        assert!(t.yes_from <= 25.0 && t.yes_from > 22.0, "{t:?}");
        // It never answers below, even where "no" would be right.
        assert_eq!(t.no_until, f64::NEG_INFINITY);
        let never: Vec<(f64, bool)> = (0..50).map(|i| (i as f64, false)).collect();
        assert!(choose_upper(&never, 0.95).refused());
    }

    #[test]
    fn the_band_keeps_within_the_target() {
        // Mostly separable, with noise near the middle.
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64, i > 25 || i == 20 || i == 22)).collect();
        for target in [0.9, 0.95, 0.99] {
            let t = choose(&sample, target);
            let wrong = sample.iter().filter(|(s, yes)| t.decide(*s).is_some_and(|d| d != *yes)).count();
            assert!(wrong as f64 <= (1.0 - target) * 50.0 + 1e-9, "{target}: {wrong} wrong, {t:?}");
            assert!(t.decide(0.0) == Some(false) && t.decide(49.0) == Some(true), "{target}: {t:?}");
        }
    }
}
