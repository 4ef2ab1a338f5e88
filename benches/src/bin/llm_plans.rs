//! `lakelink-llm-plans`: what the cheap plans of the semantic functions save,
//! and what they cost in quality against the model-only plan (the oracle),
//! with the local model, side by side in one run:
//!
//! * semantic join: reviews x the shop's product nouns `ON llm_match(review,
//!   name, 'the review is about this product')`, the nested loop
//!   (`match_candidates = 0`, every pair asked) against embedding blocking;
//! * semantic top-k: `ORDER BY llm_rank(review, criterion) DESC LIMIT k`,
//!   every row scored (`rank_pool = 0`) against the embedding pool;
//! * cascades: `llm_filter` with the model only against
//!   `cascade_target` 0.9 and 0.95 (agreement per row with the model only).
//!
//! It prints generative model calls and embedding requests (32 texts
//! each), wall time, agreement with the oracle (recall and precision of its
//! matches; the share of its top k found; the rows answered alike) and
//! agreement with the truth known by construction (the noun a review names;
//! its topic and sentiment). Answer cache off.
//!
//! ```sh
//! cargo run --release --bin lakelink-llm-plans -- --left 40 --rows 300 --json benches/results/llm-plans.json
//! ```

use std::collections::BTreeSet;
use std::time::Instant;

use clap::Parser;
use lakelink_tests::{TestCluster, query, rows};
use serde_json::{Value, json};

#[path = "../llm_lake.rs"]
mod llm_lake;
use llm_lake::{ratio, write_lake};

#[derive(Debug, Parser)]
#[command(name = "lakelink-llm-plans")]
struct Args {
    /// Reviews on the left of the semantic join (the right side is the
    /// shop's 40 product nouns).
    #[arg(long, default_value_t = 40)]
    left: usize,
    /// Reviews ranked by the top-k cases.
    #[arg(long, default_value_t = 300)]
    rows: usize,
    /// The k of the top-k cases.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// `match_candidates` values to compare with the nested loop.
    #[arg(long, value_delimiter = ',', default_value = "3,5")]
    candidates: Vec<usize>,
    /// `rank_pool` values to compare with scoring every row.
    #[arg(long, value_delimiter = ',', default_value = "3,5")]
    pools: Vec<usize>,
    /// `cascade_target` values to compare with the model-only plans.
    #[arg(long, value_delimiter = ',', default_value = "0.9,0.95")]
    targets: Vec<f64>,
    /// Cascade cases whose call starts with this (such as `llm_classify`); all when absent.
    #[arg(long)]
    only: Option<String>,
    /// The cases to run: `join`, `top-k`, `cascade`.
    #[arg(long, value_delimiter = ',', default_value = "join,top-k,cascade")]
    cases: Vec<String>,
    /// A statement run first, such as `SET lakelink.llm.calibrate = false`
    /// (repeatable).
    #[arg(long)]
    set: Vec<String>,
    /// Writes the figures as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// A ranking criterion and the SQL condition of the rows that truly fit it.
const CRITERIA: &[(&str, &str)] = &[
    ("the customer complains about a late delivery", "topic = 'delivery' AND sentiment = 'negative'"),
    ("the customer praises the low price", "topic = 'price' AND sentiment = 'positive'"),
];

type Conn = lakelink::Connection;

/// Generative requests, embedding requests and values a cascade's proxy
/// answered, recorded so far.
async fn requests(conn: &mut Conn) -> Result<(usize, usize, usize), Box<dyn std::error::Error>> {
    let got = rows(
        &query(
            conn,
            "SELECT count(*) FILTER (WHERE backend <> 'proxy' AND NOT cache_hit AND model NOT LIKE '%minilm%' \
                                     AND function <> 'llm_similarity'), \
                    count(*) FILTER (WHERE backend <> 'proxy' AND NOT cache_hit \
                                     AND (model LIKE '%minilm%' OR function = 'llm_similarity')), \
                    coalesce(sum(rows) FILTER (WHERE backend = 'proxy'), 0) \
             FROM system.model_calls",
        )
        .await?,
    );
    Ok((got[0][0].parse()?, got[0][1].parse()?, got[0][2].parse()?))
}

/// What one run of a plan cost.
struct Cost {
    /// Generative model requests.
    calls: usize,
    /// Embedding requests (32 texts each).
    embeddings: usize,
    /// Values a cascade's proxy answered.
    proxy: usize,
    seconds: f64,
}

/// Runs `sql` after `settings`, returning its rows and what it cost.
async fn measured(
    conn: &mut Conn,
    settings: &[String],
    sql: &str,
) -> Result<(Vec<Vec<String>>, Cost), Box<dyn std::error::Error>> {
    for s in settings {
        query(conn, s).await?;
    }
    let before = requests(conn).await?;
    let started = Instant::now();
    let got = rows(&query(conn, sql).await?);
    let seconds = started.elapsed().as_secs_f64();
    let after = requests(conn).await?;
    let (calls, embeddings, proxy) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    Ok((got, Cost { calls, embeddings, proxy, seconds }))
}

async fn join_cases(conn: &mut Conn, args: &Args, figures: &mut Vec<Value>) -> Result<(), Box<dyn std::error::Error>> {
    let sql = format!(
        "SELECT r.id, p.name FROM reviews r JOIN products p \
         ON llm_match(r.review, p.name, 'the review is about this product') WHERE r.id < {}",
        args.left
    );
    let truth: BTreeSet<(String, String)> =
        rows(&query(conn, &format!("SELECT id, noun FROM reviews WHERE id < {}", args.left)).await?)
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
    let pairs = |got: Vec<Vec<String>>| -> BTreeSet<(String, String)> {
        got.into_iter().map(|r| (r[0].clone(), r[1].clone())).collect()
    };
    let (got, oracle_cost) = measured(conn, &["SET lakelink.llm.match_candidates = 0".to_string()], &sql).await?;
    let oracle = pairs(got);
    println!(
        "| join plan | model calls | embedding requests | fewer calls | s | pairs | recall of the oracle's | \
         precision vs the oracle | truth among the candidates | recall of the truth | precision vs the truth |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut row = |name: String, got: &BTreeSet<(String, String)>, cost: &Cost, blocking: f64| {
        let agree = got.intersection(&oracle).count();
        let right = got.intersection(&truth).count();
        let fewer = ratio(oracle_cost.calls, cost.calls + cost.embeddings);
        println!(
            "| {name} | {} | {} | {fewer:.1}x | {:.1} | {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% |",
            cost.calls,
            cost.embeddings,
            cost.seconds,
            got.len(),
            ratio(agree, oracle.len()) * 100.0,
            ratio(agree, got.len()) * 100.0,
            blocking * 100.0,
            ratio(right, truth.len()) * 100.0,
            ratio(right, got.len()) * 100.0
        );
        figures.push(json!({"case": "join", "plan": name, "model_calls": cost.calls,
            "embedding_requests": cost.embeddings, "seconds": cost.seconds, "pairs": got.len(),
            "fewer_calls": fewer, "oracle_recall": ratio(agree, oracle.len()),
            "oracle_precision": ratio(agree, got.len()), "truth_among_candidates": blocking,
            "truth_recall": ratio(right, truth.len()), "truth_precision": ratio(right, got.len())}));
    };
    row(format!("nested loop ({} x 40 pairs, the oracle)", args.left), &oracle, &oracle_cost, 1.0);
    for &c in &args.candidates {
        // How often blocking keeps the true product among a review's candidates.
        let blocked = format!(
            "SELECT count(*) FROM (SELECT r.noun, p.name, row_number() OVER (PARTITION BY r.review \
             ORDER BY llm_similarity(r.review, p.name) DESC, p.name) AS n FROM reviews r CROSS JOIN products p \
             WHERE r.id < {}) WHERE n <= {c} AND noun = name",
            args.left
        );
        let kept: usize = rows(&query(conn, &blocked).await?)[0][0].parse()?;
        let set = [format!("SET lakelink.llm.match_candidates = {c}")];
        let (got, cost) = measured(conn, &set, &sql).await?;
        let name = format!("blocking: the model picks among {c} candidates per review");
        row(name, &pairs(got), &cost, ratio(kept, truth.len()));
    }
    println!();
    Ok(())
}

async fn top_k_cases(conn: &mut Conn, args: &Args, figures: &mut Vec<Value>) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "| criterion | plan | model calls | embedding requests | fewer calls | s | oracle's top k found | \
         same item at each position | truly fitting |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (criterion, truth) in CRITERIA {
        let sql = format!(
            "SELECT id, {truth} FROM reviews WHERE id < {} ORDER BY llm_rank(review, '{criterion}') DESC, id LIMIT {}",
            args.rows, args.k
        );
        let (oracle, oracle_cost) = measured(conn, &["SET lakelink.llm.rank_pool = 0".to_string()], &sql).await?;
        let oracle_calls = oracle_cost.calls;
        let mut plans = vec![("every row scored (the oracle)".to_string(), oracle.clone(), oracle_cost)];
        for &pool in &args.pools {
            let (got, cost) = measured(conn, &[format!("SET lakelink.llm.rank_pool = {pool}")], &sql).await?;
            plans.push((format!("pool of {pool} x k by embedding"), got, cost));
        }
        let oracle_ids: BTreeSet<&String> = oracle.iter().map(|r| &r[0]).collect();
        for (plan, got, cost) in &plans {
            let found = got.iter().filter(|r| oracle_ids.contains(&r[0])).count();
            let same = got.iter().zip(&oracle).filter(|(a, b)| a[0] == b[0]).count();
            let fitting = got.iter().filter(|r| r[1] == "true").count();
            let fewer = ratio(oracle_calls, cost.calls + cost.embeddings);
            println!(
                "| {criterion} | {plan} | {} | {} | {fewer:.1}x | {:.1} | {:.0}% | {:.0}% | {:.0}% |",
                cost.calls,
                cost.embeddings,
                cost.seconds,
                ratio(found, args.k) * 100.0,
                ratio(same, args.k) * 100.0,
                ratio(fitting, got.len()) * 100.0
            );
            figures.push(json!({"case": "top-k", "criterion": criterion, "plan": plan, "model_calls": cost.calls,
                "embedding_requests": cost.embeddings, "seconds": cost.seconds, "fewer_calls": fewer,
                "oracle_top_k_found": ratio(found, args.k), "same_position": ratio(same, args.k),
                "truly_fitting": ratio(fitting, got.len())}));
        }
    }
    println!();
    Ok(())
}

/// The calls of the cascade cases: table, column, the call (`{column}`
/// stands for the column).
const CASCADES: &[(&str, &str, &str)] = &[
    ("reviews", "review", "llm_filter({column}, 'the customer is happy')"),
    ("reviews", "review", "llm_filter({column}, 'the review talks about the delivery or shipping')"),
    ("parts", "p_name", "llm_filter({column}, 'contains the word green')"),
    ("reviews", "review", "llm_classify({column}, 'positive', 'negative')"),
    ("reviews", "review", "llm_classify({column}, 'quality', 'delivery', 'price', 'service')"),
];

async fn cascade_cases(
    conn: &mut Conn,
    args: &Args,
    figures: &mut Vec<Value>,
) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "| call | plan | model calls | embedding requests | proxy answered | fewer calls | s | agreement with the oracle | most common answer |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let wanted = |call: &&(&str, &str, &str)| args.only.as_ref().is_none_or(|only| call.2.starts_with(only.as_str()));
    for (table, column, call) in CASCADES.iter().filter(wanted) {
        let call = call.replace("{column}", column);
        let sql = format!("SELECT id, {call} FROM {table} WHERE id < {} ORDER BY id", args.rows);
        let (oracle, oracle_cost) = measured(conn, &["SET lakelink.llm.cascade_target = 0".to_string()], &sql).await?;
        let mut plans = vec![("model only (the oracle)".to_string(), oracle.clone(), oracle_cost)];
        for &target in &args.targets {
            let (got, cost) = measured(conn, &[format!("SET lakelink.llm.cascade_target = {target}")], &sql).await?;
            plans.push((format!("cascade, target {target}"), got, cost));
        }
        for (plan, got, cost) in &plans {
            let proxy = cost.proxy;
            let agree = got.iter().zip(&oracle).filter(|(a, b)| a == b).count();
            let mut answers: std::collections::BTreeMap<&str, usize> = Default::default();
            for r in got {
                *answers.entry(r[1].as_str()).or_default() += 1;
            }
            let (common, times) = answers.into_iter().max_by_key(|(_, n)| *n).unwrap_or(("", 0));
            let fewer = ratio(plans[0].2.calls, cost.calls + cost.embeddings);
            println!(
                "| {call} | {plan} | {} | {} | {proxy} | {fewer:.1}x | {:.1} | {:.1}% | {common} {:.0}% |",
                cost.calls,
                cost.embeddings,
                cost.seconds,
                ratio(agree, oracle.len()) * 100.0,
                ratio(times, got.len()) * 100.0
            );
            figures.push(json!({"case": "cascade", "call": call, "plan": plan, "model_calls": cost.calls,
                "embedding_requests": cost.embeddings, "proxy_answered": proxy, "seconds": cost.seconds,
                "fewer_calls": fewer, "agreement": ratio(agree, oracle.len()),
                "most_common_answer": common, "its_share": ratio(times, got.len())}));
        }
    }
    println!();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    write_lake(&lake, args.rows.max(args.left)).await?;
    let cluster = TestCluster::start_isolated(&lake, dir.path()).await;
    let setup = std::iter::once("SET lakelink.llm.cache = false").chain(args.set.iter().map(String::as_str));
    let mut conn = cluster.connect_with(setup).await;
    let mut figures = Vec::new();
    let wanted = |case: &str| args.cases.iter().any(|c| c == case);
    if wanted("join") {
        join_cases(&mut conn, &args, &mut figures).await?;
    }
    if wanted("top-k") {
        top_k_cases(&mut conn, &args, &mut figures).await?;
    }
    if wanted("cascade") {
        cascade_cases(&mut conn, &args, &mut figures).await?;
    }
    if let Some(path) = &args.json {
        let out = json!({"left": args.left, "rows": args.rows, "k": args.k, "cases": figures});
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
