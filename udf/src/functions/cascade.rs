//! The cascades of `llm_filter` and `llm_classify`: a cheap proxy answers
//! the values it is sure about, the model the rest.
//!
//! On when the session sets `lakelink.llm.cascade_target` (a fraction such
//! as `0.95`; `0`, the default, is off). A query's call has one sample of
//! [`SAMPLE`] distinct values, asked of the model once over all the
//! processes running the query: through the cluster's ledger
//! ([`lakelink_model::ledger`]) each process reserves part of the sample,
//! asks the model about that many of its values (taken in the order of a
//! hash of the value, not the table's order, so a sorted table still gives
//! a spread sample) and adds them; a process that could ask more while the
//! rest of the sample is reserved by others waits for their values. Every
//! process then fits on the whole sample. A
//! process that cannot reach the ledger samples alone.
//! Three proxies are fitted on that sample, and the one that decides the
//! most of it within the target is kept (the first listed on a tie):
//!
//! * **words**: the cosine similarity of a value's embedding with the
//!   condition's (`llm_filter`), or the label most similar to the value,
//!   scored by how far it leads the next label (`llm_classify`);
//! * **centroids**: the mean embedding of the sample values the model gave
//!   each answer: how much nearer the value is to the yes mean than to the
//!   no mean (`llm_filter`), or the answer with the nearest mean, scored by
//!   its lead over the next (`llm_classify`);
//! * **neighbours**: the model's answers for the [`NEIGHBOURS`] sample
//!   values nearest to the value (by embedding), weighted by similarity:
//!   the share of yes (`llm_filter`), or the label with the most weight,
//!   scored by its share (`llm_classify`).
//!
//! A sample value is scored by the centroids and neighbours of the other
//! sample values (leave-one-out), so their thresholds are chosen on answers
//! the proxy did not see.
//!
//! The thresholds: `llm_filter` gets a band (values at or below `no_until`
//! are no, at or above `yes_from` yes), `llm_classify` a lowest score from
//! which the proxy's label is taken. The choice decides the most sample
//! values while the proxy's answers disagree with the model's on at most
//! `1 - target` of the sample, of each answer the proxy gives, and of each
//! answer the model gave (a rare answer is not traded for a common one);
//! each side's share is counted with one more right and one more wrong
//! value than seen, so a side needs 19 sample values all right for 95%.
//! Values it leaves go to the model. When no threshold of either proxy meets
//! the target the cascade refuses: every value goes to the model. Each
//! batch's proxy answers, the proxy, its thresholds and the sample's
//! agreement are a trail line (`backend` `proxy`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::common::Result;
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::trail::{self, ModelCall};
use serde::{Deserialize, Serialize};

use super::cosine;

/// Distinct values of the sample, per query and call.
pub const SAMPLE: usize = 50;

/// Sample values whose answers vote for a value's (the neighbours proxy).
pub const NEIGHBOURS: usize = 5;

/// An answer as a number: `llm_filter` 0 (no) and 1 (yes), `llm_classify`
/// the label's index (the number of labels: no label fits).
type Class = usize;

/// What the sample decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Values at or below this score are no (`-inf`: none).
    pub no_until: f64,
    /// Values at or above this score are yes (`+inf`: none).
    pub yes_from: f64,
    /// The share of the sample on which the proxy's answers (where it
    /// answers) agree with the model's.
    pub agreement: f64,
    /// Sample values the thresholds decide.
    pub decided: usize,
}

impl Thresholds {
    /// The proxy's answer for a score, if it is sure.
    pub fn decide(&self, score: f64) -> Option<bool> {
        if score >= self.yes_from {
            Some(true)
        } else if score <= self.no_until {
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

/// A sample value for the threshold choice: the proxy's score, the model's
/// yes (two-sided) or whether the model gave the proxy's answer (one-sided),
/// and the model's answer.
pub type Entry = (f64, bool, Class);

/// The thresholds for a sample: with `two_sided`, the widest band (no at
/// or below it, yes at or above it); otherwise the lowest score from which
/// the proxy's answer is taken. The proxy's answers may disagree with the
/// model's on at most `1 - target` of the sample, of each side, and of each
/// answer the model gave.
pub fn choose(sample: &[Entry], target: f64, two_sided: bool) -> Thresholds {
    let mut sorted = sample.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = sorted.len();
    let allowed = |size: usize| ((1.0 - target) * size as f64 + 1e-9).floor() as usize;
    let classes = sorted.iter().map(|e| e.2 + 1).max().unwrap_or(0);
    let mut class_size = vec![0; classes];
    for e in &sorted {
        class_size[e.2] += 1;
    }
    // A side must be right on the target's share of its own values, counted
    // with one more right and one more wrong value than seen (so 19 values
    // all right make 95%, 10 do not): a small band of coin flips, or of
    // values right by chance, may not decide.
    let sure = |size: usize, wrong: usize| size == 0 || (size - wrong + 1) as f64 / (size + 2) as f64 >= target - 1e-9;
    // The band deciding the most values; of those, the one with the fewest errors.
    let (mut best, mut best_errors, mut band) = (0, 0, (0, n));
    for i in 0..=if two_sided { n } else { 0 } {
        for j in i..=n {
            // A threshold may not split values of equal score.
            let clean_no = i == 0 || i == n || sorted[i - 1].0 < sorted[i].0;
            let clean_yes = j == 0 || j == n || sorted[j - 1].0 < sorted[j].0;
            let decided = i + (n - j);
            if !(clean_no && clean_yes) || decided < best {
                continue;
            }
            // Below the band the proxy says no (wrong where the model said
            // yes); above it, its answer (wrong where the model's differs).
            let (mut wrong_no, mut wrong_yes, mut wrong_of) = (0, 0, vec![0; classes]);
            for (k, e) in sorted.iter().enumerate().filter(|(k, _)| *k < i || *k >= j) {
                let wrong = if k < i { e.1 } else { !e.1 };
                if wrong {
                    *if k < i { &mut wrong_no } else { &mut wrong_yes } += 1;
                    wrong_of[e.2] += 1;
                }
            }
            let errors = wrong_no + wrong_yes;
            let better = decided > best || errors < best_errors;
            let within = errors <= allowed(n)
                && sure(i, wrong_no)
                && sure(n - j, wrong_yes)
                && wrong_of.iter().zip(&class_size).all(|(&w, &size)| w <= allowed(size));
            if better && within {
                (best, best_errors, band) = (decided, errors, (i, j));
            }
        }
    }
    let (i, j) = band;
    Thresholds {
        no_until: if i == 0 { f64::NEG_INFINITY } else { sorted[i - 1].0 },
        yes_from: if j == n { f64::INFINITY } else { sorted[j].0 },
        agreement: if n == 0 { 1.0 } else { 1.0 - best_errors as f64 / n as f64 },
        decided: best,
    }
}

/// Which proxy a cascade kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Words,
    Centroids,
    Neighbours,
}

/// A cascade's proxy and thresholds, chosen on its sample.
struct Fitted {
    kind: Kind,
    thresholds: Thresholds,
    /// The sample's embeddings and the model's answers (the neighbours proxy).
    known: Vec<(Vec<f32>, Class)>,
    /// Each answer's mean embedding (the centroids proxy).
    centroids: Vec<Option<Vec<f32>>>,
}

/// A value of the sample.
struct Sampled {
    vector: Option<Vec<f32>>,
    words: Opinion,
    /// The model's answer.
    class: Class,
}

/// One query's cascade for one call in this process.
#[derive(Default)]
pub struct Cascade {
    /// The sample so far, until the proxy is fitted.
    sample: tokio::sync::Mutex<Vec<Sampled>>,
    fitted: OnceLock<Fitted>,
    /// The cluster's ledger could not be asked: this process samples alone.
    alone: AtomicBool,
}

/// A value's place in the order sample values are taken in: a hash of the
/// value, the same in every process.
fn spread(value: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Cascades remembered per process; older ones are forgotten.
const REMEMBERED: usize = 256;

/// The cascade of `query_id`'s call on `key` in this process.
pub fn cascade(query_id: &str, key: &str) -> Arc<Cascade> {
    type Cascades = Mutex<VecDeque<(String, Arc<Cascade>)>>;
    static CASCADES: OnceLock<Cascades> = OnceLock::new();
    if query_id.is_empty() {
        return Arc::default();
    }
    let key = format!("{query_id}\u{0}{key}");
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
/// through the cascade; `ask` asks the model for some of them.
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
    let proxy = Proxy::new("llm_filter", condition.to_string(), true, 2, vec![wanted], vectors);
    proxy.run(options, values, |model: &Option<bool>| model.map(Class::from), |class| Some(class == 1), ask).await
}

/// Answers `values` of `llm_classify` into `labels` through the cascade.
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
    let proxy = Proxy::new("llm_classify", labels.join("\u{0}"), false, labels.len() + 1, label_vectors, vectors);
    let class_of = |model: &Option<String>| {
        Some(model.as_ref().and_then(|m| labels.iter().position(|l| l == m)).unwrap_or(labels.len()))
    };
    proxy.run(options, values, class_of, |class| labels.get(class).cloned(), ask).await
}

/// A proxy's view of one value: the answer it leans to and its score.
#[derive(Debug, Clone, Copy)]
struct Opinion {
    lean: Class,
    score: f64,
}

/// The proxies' view of one batch.
struct Proxy {
    function: &'static str,
    /// What the cascade is of (the condition, the labels).
    key: String,
    /// Thresholds on both sides (`decide` gives no or yes), or above only.
    two_sided: bool,
    /// How many answers there are.
    classes: usize,
    /// The embeddings the words proxy compares values with: the condition's
    /// (`llm_filter`) or each label's (`llm_classify`).
    anchors: Vec<Vec<f32>>,
    /// The words proxy's opinion of each value.
    words: Vec<Opinion>,
    /// Each value's embedding.
    vectors: Vec<Option<Vec<f32>>>,
}

/// A sample value as the cluster's processes share it through the ledger.
#[derive(Serialize, Deserialize)]
struct SharedValue {
    vector: Option<Vec<f32>>,
    class: Class,
}

/// What a process does next for its cascade's sample ([`Proxy::turn`]).
enum Turn {
    /// Ask the model about this many of its values (0: none now).
    Ask(usize),
    /// The sample is complete: fit on it.
    Complete(Vec<Sampled>),
    /// Other processes are asking the rest of the sample: look again shortly.
    Wait,
}

impl Proxy {
    fn new(
        function: &'static str,
        key: String,
        two_sided: bool,
        classes: usize,
        anchors: Vec<Vec<f32>>,
        vectors: Vec<Option<Vec<f32>>>,
    ) -> Self {
        let mut proxy = Proxy { function, key, two_sided, classes, anchors, words: Vec::new(), vectors };
        proxy.words = proxy.vectors.iter().map(|v| proxy.words_of(v.as_deref())).collect();
        proxy
    }

    /// The words proxy's opinion of a value's embedding: its similarity to
    /// the condition, or the most similar label and its lead over the next.
    fn words_of(&self, vector: Option<&[f32]>) -> Opinion {
        let Some(vector) = vector else { return Opinion { lean: if self.two_sided { 1 } else { 0 }, score: 0.0 } };
        if self.two_sided {
            return Opinion { lean: 1, score: self.anchors.first().map_or(0.0, |a| cosine(vector, a)) };
        }
        let mut sims: Vec<(f64, Class)> =
            self.anchors.iter().enumerate().map(|(l, a)| (cosine(vector, a), l)).collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0));
        let Some(&(best, lean)) = sims.first() else { return Opinion { lean: 0, score: 0.0 } };
        Opinion { lean, score: best - sims.get(1).map_or(best, |s| s.0) }
    }

    /// A value another process added to the shared sample, if it is one
    /// this cascade can use (an answer it knows, an embedding of its size).
    fn shared(&self, entry: &str) -> Option<Sampled> {
        let value: SharedValue = serde_json::from_str(entry).ok()?;
        let dims = self.anchors.first().map_or(0, Vec::len);
        if value.class >= self.classes || value.vector.as_ref().is_some_and(|v| v.len() != dims) {
            return None;
        }
        Some(Sampled { words: self.words_of(value.vector.as_deref()), vector: value.vector, class: value.class })
    }

    /// Answers the batch: `class_of` reads the model's answer as a class
    /// (`None`: not part of the sample), `answer_of` writes one.
    async fn run<T, F, Fut>(
        self,
        options: &LlmOptions,
        values: Vec<String>,
        class_of: impl Fn(&T) -> Option<Class>,
        answer_of: impl Fn(Class) -> T,
        ask: F,
    ) -> Result<Vec<T>>
    where
        T: Clone,
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let name = format!("{}\u{0}{}", self.function, self.key);
        let cascade = cascade(&options.query_id, &name);
        let mut out: Vec<Option<T>> = vec![None; values.len()];
        if cascade.fitted.get().is_none() {
            let mut sample = cascade.sample.lock().await;
            if cascade.fitted.get().is_none() {
                // The batch's values in an order that does not follow the
                // table's (a sorted table's first values are no sample).
                let mut order: Vec<usize> = (0..values.len()).collect();
                order.sort_by_key(|&i| spread(&values[i]));
                let mut order = order.into_iter();
                let mut added = Vec::new();
                loop {
                    let want = order.len().min(SAMPLE);
                    let turn = self.turn(options, &cascade, &name, sample.len(), want, std::mem::take(&mut added));
                    let granted = match turn.await? {
                        Turn::Complete(all) => {
                            *sample = all;
                            break;
                        }
                        Turn::Wait => {
                            tokio::time::sleep(engine::SETTLED_POLL).await;
                            continue;
                        }
                        Turn::Ask(0) => break,
                        Turn::Ask(n) => n,
                    };
                    let picked: Vec<usize> = order.by_ref().take(granted).collect();
                    let asked = ask(picked.iter().map(|&i| values[i].clone()).collect()).await?;
                    for (&i, model) in picked.iter().zip(asked) {
                        if let Some(class) = class_of(&model) {
                            let vector = self.vectors[i].clone();
                            let value = SharedValue { vector: vector.clone(), class };
                            added.push(serde_json::to_string(&value).map_err(|e| {
                                datafusion::common::DataFusionError::Internal(format!("a cascade's sample value: {e}"))
                            })?);
                            sample.push(Sampled { vector, words: self.words[i], class });
                        }
                        out[i] = Some(model);
                    }
                    if cascade.alone.load(Ordering::Relaxed) {
                        break;
                    }
                }
                if sample.len() >= SAMPLE {
                    let _ = cascade.fitted.set(self.fit(&sample, options.cascade_target));
                }
            }
        }
        let fitted = cascade.fitted.get();
        let mut decided = 0;
        let mut rest = Vec::new();
        for (i, slot) in out.iter_mut().enumerate().filter(|(_, slot)| slot.is_none()) {
            match fitted.and_then(|f| self.decide(f, i)) {
                Some(class) => {
                    *slot = Some(answer_of(class));
                    decided += 1;
                }
                None => rest.push(i),
            }
        }
        if let Some(f) = fitted {
            record(options, self.function, self.two_sided, decided, rest.len(), f);
        }
        let asked = ask(rest.iter().map(|&i| values[i].clone()).collect()).await?;
        for (&i, model) in rest.iter().zip(asked) {
            out[i] = Some(model);
        }
        Ok(out.into_iter().map(|a| a.expect("every value answered")).collect())
    }

    /// This process's turn at the query's sample of this cascade: `have`
    /// values in hand, `want` more it could ask, `added` asked since its last
    /// turn. Without the cluster's ledger the process samples alone.
    async fn turn(
        &self,
        options: &LlmOptions,
        cascade: &Cascade,
        name: &str,
        have: usize,
        want: usize,
        added: Vec<String>,
    ) -> Result<Turn> {
        if !cascade.alone.load(Ordering::Relaxed) {
            match engine::share_sample(options, self.function, name, SAMPLE, want, added).await? {
                Some(state) => {
                    if let Some(all) = state.complete {
                        return Ok(Turn::Complete(all.iter().filter_map(|e| self.shared(e)).collect()));
                    }
                    if state.granted == 0 && state.others > 0 && want > 0 {
                        return Ok(Turn::Wait);
                    }
                    return Ok(Turn::Ask(state.granted));
                }
                None => cascade.alone.store(true, Ordering::Relaxed),
            }
        }
        Ok(Turn::Ask(want.min(SAMPLE.saturating_sub(have))))
    }

    /// A sample value for the threshold choice, given the model's answer.
    fn entry(&self, opinion: Opinion, class: Class) -> Entry {
        let agrees = if self.two_sided { class == 1 } else { opinion.lean == class };
        (opinion.score, agrees, class)
    }

    /// The proxy that decides the most of the sample within the target:
    /// the words, the centroids or the neighbours (scored leave-one-out).
    fn fit(&self, sample: &[Sampled], target: f64) -> Fitted {
        let entries: Vec<Entry> = sample.iter().map(|s| self.entry(s.words, s.class)).collect();
        let mut best = Fitted {
            kind: Kind::Words,
            thresholds: choose(&entries, target, self.two_sided),
            known: Vec::new(),
            centroids: Vec::new(),
        };
        let known: Vec<(Vec<f32>, Class)> = sample.iter().filter_map(|s| Some((s.vector.clone()?, s.class))).collect();
        if known.len() <= NEIGHBOURS {
            return best;
        }
        for kind in [Kind::Centroids, Kind::Neighbours] {
            let entries: Vec<Entry> = known
                .iter()
                .enumerate()
                .map(|(k, (vector, class))| {
                    let opinion = match kind {
                        Kind::Centroids => self.nearest_centroid(vector, &self.centroids(&known, Some(k))),
                        _ => self.neighbours(vector, known.iter().enumerate().filter(|(o, _)| *o != k).map(|(_, e)| e)),
                    };
                    self.entry(opinion, *class)
                })
                .collect();
            let thresholds = choose(&entries, target, self.two_sided);
            if thresholds.decided > best.thresholds.decided {
                best = Fitted { kind, thresholds, known: Vec::new(), centroids: Vec::new() };
            }
        }
        match best.kind {
            Kind::Words => {}
            Kind::Centroids => best.centroids = self.centroids(&known, None),
            Kind::Neighbours => best.known = known,
        }
        best
    }

    /// Each answer's normalized mean embedding in `known`, leaving out
    /// value `skip`; `None` for an answer without values.
    fn centroids(&self, known: &[(Vec<f32>, Class)], skip: Option<usize>) -> Vec<Option<Vec<f32>>> {
        let dims = known.first().map_or(0, |(v, _)| v.len());
        let mut sums = vec![vec![0f32; dims]; self.classes];
        for (_, (vector, class)) in known.iter().enumerate().filter(|(k, _)| Some(*k) != skip) {
            for (sum, x) in sums[*class].iter_mut().zip(vector) {
                *sum += x;
            }
        }
        sums.into_iter()
            .map(|mut sum| {
                let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
                (norm > 0.0).then(|| {
                    sum.iter_mut().for_each(|x| *x /= norm);
                    sum
                })
            })
            .collect()
    }

    /// The centroids proxy's opinion of a value.
    fn nearest_centroid(&self, vector: &[f32], centroids: &[Option<Vec<f32>>]) -> Opinion {
        let similarity: Vec<f64> = centroids.iter().map(|c| c.as_deref().map_or(-1.0, |c| cosine(vector, c))).collect();
        let mut order: Vec<Class> = (0..self.classes).collect();
        order.sort_by(|&a, &b| similarity[b].total_cmp(&similarity[a]));
        let lean = order[0];
        let score = if self.two_sided {
            similarity[1] - similarity[0]
        } else {
            similarity[lean] - order.get(1).map_or(similarity[lean], |&next| similarity[next])
        };
        Opinion { lean, score }
    }

    /// The neighbours proxy's opinion of a value, from `known` answers.
    fn neighbours<'a>(&self, vector: &[f32], known: impl Iterator<Item = &'a (Vec<f32>, Class)>) -> Opinion {
        let mut near: Vec<(f64, Class)> = known.map(|(v, class)| (cosine(vector, v), *class)).collect();
        near.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut weight = vec![0.0; self.classes];
        for (similarity, class) in near.into_iter().take(NEIGHBOURS) {
            weight[class] += similarity.max(0.0) + 1e-6;
        }
        let total: f64 = weight.iter().sum();
        let lean = (0..self.classes).max_by(|&a, &b| weight[a].total_cmp(&weight[b])).unwrap_or(0);
        let share = |class: Class| if total > 0.0 { weight[class] / total } else { 0.0 };
        Opinion { lean, score: if self.two_sided { share(1) } else { share(lean) } }
    }

    /// The fitted proxy's answer for value `i`, if it is sure.
    fn decide(&self, fitted: &Fitted, i: usize) -> Option<Class> {
        let opinion = match fitted.kind {
            Kind::Words => self.words[i],
            Kind::Centroids => self.nearest_centroid(self.vectors[i].as_deref()?, &fitted.centroids),
            Kind::Neighbours => self.neighbours(self.vectors[i].as_deref()?, fitted.known.iter()),
        };
        match fitted.thresholds.decide(opinion.score)? {
            side if self.two_sided => Some(Class::from(side)),
            _ => Some(opinion.lean),
        }
    }
}

/// The trail line of one batch's proxy answers.
fn record(options: &LlmOptions, function: &str, two_sided: bool, decided: usize, to_model: usize, fitted: &Fitted) {
    let t = &fitted.thresholds;
    let model = match fitted.kind {
        Kind::Words => "proxy: embedding similarity",
        Kind::Centroids => "proxy: sampled answers' mean embeddings",
        Kind::Neighbours => "proxy: nearest sampled answers",
    };
    let mut call = ModelCall::now(&options.query_id, function, model, "proxy");
    call.rows = decided as u64;
    call.confidence = Some(t.agreement);
    let how = match (fitted.kind, two_sided) {
        (Kind::Words, true) => format!("no at similarity <= {:.3}, yes at >= {:.3}", t.no_until, t.yes_from),
        (Kind::Words, false) => format!("the most similar label, where it leads the next by >= {:.3}", t.yes_from),
        (Kind::Centroids, true) => format!(
            "the mean embeddings of the sampled yes and no answers: no where the value is nearer the yes mean than \
             the no mean by <= {:.3}, yes where by >= {:.3}",
            t.no_until, t.yes_from
        ),
        (Kind::Centroids, false) => format!(
            "the answer whose sampled values' mean embedding is nearest, where it leads the next by >= {:.3}",
            t.yes_from
        ),
        (Kind::Neighbours, true) => format!(
            "the model's answers for the {NEIGHBOURS} nearest sampled values: no where yes holds <= {:.2} of their \
             weight, yes where >= {:.2}",
            t.no_until, t.yes_from
        ),
        (Kind::Neighbours, false) => format!(
            "the model's label for the {NEIGHBOURS} nearest sampled values, where it holds >= {:.2} of their weight",
            t.yes_from
        ),
    };
    call.outcome = if t.refused() {
        format!(
            "cascade refused: no proxy (embedding similarity, the sampled answers' mean embeddings or nearest \
             sampled answers) agreed with the model on {:.0}% of its {SAMPLE}-value sample; {to_model} values to the \
             model",
            options.cascade_target * 100.0
        )
    } else {
        format!(
            "cascade: the proxy decided {decided} values ({how}; the sample agreed {:.1}%), {to_model} to the model",
            t.agreement * 100.0
        )
    };
    trail::record(options, &call);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-sided sample: (score, the model said yes).
    fn two_sided(sample: &[(f64, bool)], target: f64) -> Thresholds {
        let entries: Vec<Entry> = sample.iter().map(|&(score, yes)| (score, yes, Class::from(yes))).collect();
        choose(&entries, target, true)
    }

    #[test]
    fn a_separable_sample_decides_everything() {
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64 / 50.0, i >= 30)).collect();
        let t = two_sided(&sample, 0.95);
        assert_eq!((t.agreement, t.decided), (1.0, 50));
        assert_eq!(t.decide(0.1), Some(false));
        assert_eq!(t.decide(0.9), Some(true));
        assert!(t.no_until < t.yes_from);
    }

    #[test]
    fn a_score_that_says_nothing_is_refused() {
        // Yes and no alternate whatever the score.
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64 / 50.0, i % 2 == 0)).collect();
        let t = two_sided(&sample, 0.95);
        assert!(t.refused(), "{t:?}");
        assert_eq!(t.decide(0.5), None);
    }

    #[test]
    fn of_equally_wide_bands_the_one_with_fewer_errors_wins() {
        // Every value of the sample is no: saying no to all is right, saying
        // yes to the two most similar would be two errors.
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64, false)).collect();
        let t = two_sided(&sample, 0.95);
        assert_eq!(t.agreement, 1.0);
        assert_eq!(t.decide(49.0), Some(false));
    }

    #[test]
    fn a_rare_answer_is_not_traded_for_the_common_one() {
        // One yes among 49 no, in the middle of the scores: saying no to all
        // would agree on 98% of the sample but miss every yes.
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64, i == 20)).collect();
        let t = two_sided(&sample, 0.95);
        assert_eq!(t.decide(20.0), None, "{t:?}");
        assert_eq!((t.decide(5.0), t.decided), (Some(false), 20), "{t:?}");
    }

    #[test]
    fn one_sided_thresholds_take_the_proxy_only_above() {
        // The proxy's label (0) is the model's where its lead is 25 or more.
        let sample: Vec<(f64, bool, usize)> = (0..50).map(|i| (i as f64, i >= 25, usize::from(i < 25))).collect();
        let t = choose(&sample, 0.95, false);
        assert_eq!((t.decide(30.0), t.decide(10.0)), (Some(true), None), "{t:?}");
        assert!(t.yes_from <= 25.0 && t.yes_from > 22.0, "{t:?}");
        // It never answers below, even where "no" would be right.
        assert_eq!(t.no_until, f64::NEG_INFINITY);
        let never: Vec<(f64, bool, usize)> = (0..50).map(|i| (i as f64, false, 1)).collect();
        assert!(choose(&never, 0.95, false).refused());
    }

    #[test]
    fn the_band_keeps_within_the_target() {
        // Mostly separable, with noise near the middle.
        let sample: Vec<(f64, bool)> = (0..50).map(|i| (i as f64, i > 25 || i == 20 || i == 22)).collect();
        for target in [0.9, 0.95] {
            let t = two_sided(&sample, target);
            let wrong = sample.iter().filter(|(s, yes)| t.decide(*s).is_some_and(|d| d != *yes)).count();
            assert!(wrong as f64 <= (1.0 - target) * 50.0 + 1e-9, "{target}: {wrong} wrong, {t:?}");
            assert!(t.decide(0.0) == Some(false) && t.decide(49.0) == Some(true), "{target}: {t:?}");
        }
    }

    /// A unit vector at `degrees` in the plane.
    fn at(degrees: f64) -> Vec<f32> {
        let r = degrees.to_radians();
        vec![r.cos() as f32, r.sin() as f32]
    }

    /// A filter's sample: the model's yes where `yes(i)`, at `degrees(i)`;
    /// the words give every value the same score.
    fn filter_sample(yes: impl Fn(usize) -> bool, degrees: impl Fn(usize) -> f64) -> Vec<Sampled> {
        (0..50)
            .map(|i| Sampled {
                vector: Some(at(degrees(i))),
                words: Opinion { lean: 1, score: 0.5 },
                class: Class::from(yes(i)),
            })
            .collect()
    }

    fn filter_proxy(vectors: &[f64]) -> Proxy {
        Proxy {
            function: "llm_filter",
            key: "c".into(),
            two_sided: true,
            classes: 2,
            anchors: vec![at(45.0)],
            words: vec![Opinion { lean: 1, score: 0.5 }; vectors.len()],
            vectors: vectors.iter().map(|&d| Some(at(d))).collect(),
        }
    }

    #[test]
    fn the_sampled_answers_decide_where_the_words_say_nothing() {
        // Yes values lie near 90 degrees, no values near 0.
        let sample = filter_sample(|i| i % 2 == 0, |i| if i % 2 == 0 { 80.0 } else { 0.0 } + (i % 7) as f64);
        let proxy = filter_proxy(&[88.0, 3.0]);
        let fitted = proxy.fit(&sample, 0.95);
        // The means and the neighbours both decide the whole sample; the means come first.
        assert_eq!((fitted.kind, fitted.thresholds.decided), (Kind::Centroids, 50));
        assert_eq!((proxy.decide(&fitted, 0), proxy.decide(&fitted, 1)), (Some(1), Some(0)));
        // Where the words separate as well, they are kept.
        let worded: Vec<Sampled> =
            sample.into_iter().map(|s| Sampled { words: Opinion { lean: 1, score: s.class as f64 }, ..s }).collect();
        assert_eq!(proxy.fit(&worded, 0.95).kind, Kind::Words);
    }

    #[test]
    fn the_neighbours_answer_where_no_mean_stands_for_an_answer() {
        // Yes near 0 and 180 degrees, no near 90 and 270: the means of both
        // answers are near the origin, the neighbours are not.
        let sample = filter_sample(|i| i % 2 == 0, |i| (i % 4) as f64 * 90.0 + (i % 5) as f64);
        let proxy = filter_proxy(&[178.0, 268.0]);
        let fitted = proxy.fit(&sample, 0.95);
        assert_eq!((fitted.kind, fitted.thresholds.decided), (Kind::Neighbours, 50));
        assert_eq!((proxy.decide(&fitted, 0), proxy.decide(&fitted, 1)), (Some(1), Some(0)));
    }

    #[test]
    fn a_shared_sample_value_is_taken_only_when_it_fits_the_cascade() {
        let proxy = Proxy::new("llm_filter", "c".into(), true, 2, vec![at(0.0)], vec![Some(at(0.0))]);
        let value = |vector: Option<Vec<f32>>, class| serde_json::to_string(&SharedValue { vector, class }).unwrap();
        // Another process's value gets this process's words opinion.
        let taken = proxy.shared(&value(Some(at(90.0)), 1)).expect("a value of this cascade");
        assert_eq!(taken.class, 1);
        assert!(taken.words.score.abs() < 1e-6, "{:?}", taken.words);
        assert!(proxy.shared(&value(None, 0)).is_some(), "a value without an embedding is still an answer");
        // An answer the cascade does not have, an embedding of another size, or
        // no value at all are left out.
        assert!(proxy.shared(&value(Some(at(0.0)), 2)).is_none());
        assert!(proxy.shared(&value(Some(vec![1.0; 3]), 1)).is_none());
        assert!(proxy.shared("not a value").is_none());
        // The order sample values are taken in is the same in every process
        // and is not the table's.
        let words = ["apple", "banana", "cherry", "damson", "elder", "fig"];
        let mut order = words.to_vec();
        order.sort_by_key(|w| spread(w));
        assert_ne!(order, words);
        assert_eq!(spread("apple"), spread("apple"));
    }

    #[test]
    fn the_sampled_answers_label_what_the_labels_words_miss() {
        // Three labels and "none fits" (class 3), each answer at its own
        // angle; the words lean to label 0 for everything with a small lead.
        let sample: Vec<Sampled> = (0..50)
            .map(|i| Sampled {
                vector: Some(at((i % 4) as f64 * 30.0 + (i % 3) as f64)),
                words: Opinion { lean: 0, score: 0.01 },
                class: i % 4,
            })
            .collect();
        let proxy = Proxy {
            function: "llm_classify",
            key: "a\u{0}b\u{0}c".into(),
            two_sided: false,
            classes: 4,
            anchors: Vec::new(),
            words: vec![Opinion { lean: 0, score: 0.01 }],
            vectors: vec![Some(at(91.0))],
        };
        let fitted = proxy.fit(&sample, 0.95);
        assert_ne!(fitted.kind, Kind::Words);
        assert_eq!(proxy.decide(&fitted, 0), Some(3));
    }
}
