//! `lakelink-llm-quality`: how right the closed-answer `llm_*` functions
//! are with the local model, on texts whose truth is known by construction.
//!
//! * reviews from `lakelink datagen shop`'s generator: each has one
//!   sentiment and one topic, stored beside the text;
//! * TPC-H part names, whose words a SQL `LIKE` checks.
//!
//! Every case runs its function through SQL on a scheduler with two
//! executors (answer cache off) and prints accuracy, precision and recall
//! (per label for classifications), the share of rows the function said
//! yes to (or each label's share) next to the truth's, and model calls.
//!
//! ```sh
//! cargo run --release --bin lakelink-llm-quality -- --rows 200 --json benches/results/llm-quality.json
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use clap::Parser;
use lakelink_tests::{TestCluster, query, rows};

#[path = "../llm_lake.rs"]
mod llm_lake;
use llm_lake::{ratio, write_lake};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "lakelink-llm-quality")]
struct Args {
    /// Reviews (and part names) per case.
    #[arg(long, default_value_t = 200)]
    rows: usize,
    /// Only the cases whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// A statement run first, such as `SET lakelink.llm.calibrate = false`
    /// (repeatable).
    #[arg(long)]
    set: Vec<String>,
    /// Writes the figures as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Also scores every filter case with `llm_rank` (the model's
    /// probability of yes) for the condition and for its negation, and
    /// prints how well the score ranks the rows (ROC AUC) and how right
    /// three decision rules are.
    #[arg(long)]
    scores: bool,
}

/// A yes/no condition and the SQL that knows its truth.
struct FilterCase {
    name: &'static str,
    table: &'static str,
    column: &'static str,
    condition: &'static str,
    truth: &'static str,
}

const FILTERS: &[FilterCase] = &[
    FilterCase {
        name: "filter: the customer is happy",
        table: "reviews",
        column: "review",
        condition: "the customer is happy",
        truth: "sentiment = 'positive'",
    },
    FilterCase {
        name: "filter: the customer is unhappy",
        table: "reviews",
        column: "review",
        condition: "the customer is unhappy",
        truth: "sentiment = 'negative'",
    },
    FilterCase {
        name: "filter: complains about product quality",
        table: "reviews",
        column: "review",
        condition: "the review complains about the product's quality",
        truth: "sentiment = 'negative' AND topic = 'quality'",
    },
    FilterCase {
        name: "filter: talks about delivery",
        table: "reviews",
        column: "review",
        condition: "the review talks about the delivery or shipping",
        truth: "topic = 'delivery'",
    },
    FilterCase {
        name: "filter: part name contains green",
        table: "parts",
        column: "p_name",
        condition: "contains the word green",
        truth: "p_name LIKE '%green%'",
    },
];

/// A classification and the column holding the true label.
struct ClassifyCase {
    name: &'static str,
    labels: &'static [&'static str],
    truth: &'static str,
}

const CLASSIFIES: &[ClassifyCase] = &[
    ClassifyCase { name: "classify: sentiment", labels: &["positive", "negative"], truth: "sentiment" },
    ClassifyCase { name: "classify: topic", labels: &["quality", "delivery", "price", "service"], truth: "topic" },
];

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    write_lake(&lake, args.rows).await?;
    let cluster = TestCluster::start_isolated(&lake, dir.path()).await;
    let setup = std::iter::once("SET lakelink.llm.cache = false").chain(args.set.iter().map(String::as_str));
    let mut conn = cluster.connect_with(setup).await;
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let mut figures = Vec::new();

    println!("| case | rows | accuracy | precision | recall | said yes | truly yes | model calls | s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for case in FILTERS.iter().filter(|c| wanted(c.name)) {
        let started = Instant::now();
        let sql = format!(
            "SELECT {truth} AS truth, llm_filter({column}, '{condition}') AS got FROM {table}",
            truth = case.truth,
            column = case.column,
            condition = case.condition.replace('\'', "''"),
            table = case.table
        );
        let got = rows(&query(&mut conn, &sql).await?);
        let secs = started.elapsed().as_secs_f64();
        let (mut tp, mut fp, mut tn, mut fnn) = (0, 0, 0, 0);
        for r in &got {
            match (r[0].as_str(), r[1].as_str()) {
                ("true", "true") => tp += 1,
                ("false", "true") => fp += 1,
                ("false", "false") => tn += 1,
                _ => fnn += 1,
            }
        }
        let n = got.len();
        let calls = calls(&mut conn).await?;
        let (accuracy, precision, recall) = (ratio(tp + tn, n), ratio(tp, tp + fp), ratio(tp, tp + fnn));
        println!(
            "| {} | {n} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {calls} | {secs:.1} |",
            case.name,
            accuracy * 100.0,
            precision * 100.0,
            recall * 100.0,
            ratio(tp + fp, n) * 100.0,
            ratio(tp + fnn, n) * 100.0
        );
        figures.push(json!({"case": case.name, "rows": n, "accuracy": accuracy, "precision": precision,
            "recall": recall, "said_yes": ratio(tp + fp, n), "truly_yes": ratio(tp + fnn, n), "model_calls": calls,
            "seconds": secs}));
    }
    if args.scores {
        println!();
        println!(
            "| case | rows | AUC of P(yes) | P(yes) > 0.5 | P(yes) > P(yes) of the negation | best threshold (oracle) | s |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for case in FILTERS.iter().filter(|c| wanted(c.name)) {
            let started = Instant::now();
            let condition = case.condition.replace('\'', "''");
            let sql = format!(
                "SELECT {truth} AS truth, llm_rank({column}, '{condition}'), \
                 llm_rank({column}, 'it is not the case that {condition}') FROM {table}",
                truth = case.truth,
                column = case.column,
                table = case.table
            );
            let got = rows(&query(&mut conn, &sql).await?);
            let secs = started.elapsed().as_secs_f64();
            let scored: Vec<(bool, f64, f64)> = got
                .iter()
                .map(|r| Ok((r[0] == "true", r[1].parse()?, r[2].parse()?)))
                .collect::<Result<_, Box<dyn std::error::Error>>>()?;
            let n = scored.len();
            let right = |rule: &dyn Fn(f64, f64) -> bool| scored.iter().filter(|(t, s, q)| rule(*s, *q) == *t).count();
            let best = scored.iter().map(|(_, s, _)| right(&|x, _| x >= *s)).max().unwrap_or(0);
            println!(
                "| {} | {n} | {:.3} | {:.1}% | {:.1}% | {:.1}% | {secs:.1} |",
                case.name,
                auc(&scored),
                ratio(right(&|s, _| s > 0.5), n) * 100.0,
                ratio(right(&|s, q| s > q), n) * 100.0,
                ratio(best, n) * 100.0
            );
        }
    }
    println!();
    println!("| case | rows | accuracy | per label: precision / recall / share said (true share) | model calls | s |");
    println!("| --- | ---: | ---: | --- | ---: | ---: |");
    for case in CLASSIFIES.iter().filter(|c| wanted(c.name)) {
        let started = Instant::now();
        let labels = case.labels.iter().map(|l| format!("'{l}'")).collect::<Vec<_>>().join(", ");
        let sql = format!("SELECT {}, llm_classify(review, {labels}) FROM reviews", case.truth);
        let got = rows(&query(&mut conn, &sql).await?);
        let secs = started.elapsed().as_secs_f64();
        let n = got.len();
        let right = got.iter().filter(|r| r[0] == r[1]).count();
        let mut per_label = BTreeMap::new();
        let mut cells = Vec::new();
        for label in case.labels {
            let said = got.iter().filter(|r| r[1] == *label).count();
            let truly = got.iter().filter(|r| r[0] == *label).count();
            let both = got.iter().filter(|r| r[0] == *label && r[1] == *label).count();
            cells.push(format!(
                "{label} {:.0}% / {:.0}% / {:.0}% ({:.0}%)",
                ratio(both, said) * 100.0,
                ratio(both, truly) * 100.0,
                ratio(said, n) * 100.0,
                ratio(truly, n) * 100.0
            ));
            per_label.insert(
                label.to_string(),
                json!({"precision": ratio(both, said), "recall": ratio(both, truly), "said": ratio(said, n), "truly": ratio(truly, n)}),
            );
        }
        let none = got.iter().filter(|r| r[1] == "NULL").count();
        let calls = calls(&mut conn).await?;
        println!(
            "| {} | {n} | {:.1}% | {}; none {:.0}% | {calls} | {secs:.1} |",
            case.name,
            ratio(right, n) * 100.0,
            cells.join("; "),
            ratio(none, n) * 100.0
        );
        figures.push(json!({"case": case.name, "rows": n, "accuracy": ratio(right, n), "labels": per_label,
            "none": ratio(none, n), "model_calls": calls, "seconds": secs}));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json!({"rows": args.rows, "cases": figures}))?)?;
    }
    Ok(())
}

/// The probability that a true row scores above a false one (ties count
/// half): 1 ranks perfectly, 0.5 is chance.
fn auc(scored: &[(bool, f64, f64)]) -> f64 {
    let (mut above, mut pairs) = (0.0, 0usize);
    for (_, yes, _) in scored.iter().filter(|r| r.0) {
        for (_, no, _) in scored.iter().filter(|r| !r.0) {
            pairs += 1;
            above += if yes > no {
                1.0
            } else if yes == no {
                0.5
            } else {
                0.0
            };
        }
    }
    above / pairs as f64
}

/// Model calls recorded so far that were not answered from the cache, and
/// forgets them (the next case counts its own).
async fn calls(conn: &mut lakelink::Connection) -> Result<usize, Box<dyn std::error::Error>> {
    static SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let all = rows(&query(conn, "SELECT count(*) FROM system.model_calls WHERE NOT cache_hit").await?);
    let total: usize = all[0][0].parse()?;
    let before = SEEN.swap(total, std::sync::atomic::Ordering::Relaxed);
    Ok(total - before)
}
