//! The generated reference pages: `docs/config.md` from the settings'
//! declarations (`lakelink_model::config::SETTINGS`) and
//! `docs/functions.md` from the functions' own documentation. The test
//! `tests/tests/docs.rs` fails when a page drifts from its source;
//! `UPDATE_DOCS=1` writes them anew.

use datafusion::logical_expr::Documentation;
use lakelink_model::config::{LlmOptions, SETTINGS, Who};

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `docs/config.md`.
pub fn config_md() -> String {
    let defaults = LlmOptions::default();
    let mut out = String::from(
        "# Model settings (`lakelink.llm.*`)\n\n\
         Generated from the declarations in `model/src/config.rs`; do not edit by hand \
         (`UPDATE_DOCS=1 cargo test --test docs` writes it anew).\n\n\
         Every process reads its defaults from the `[llm]` table of its config file \
         (`$LAKELINK_CONFIG`, else `~/.config/lakelink/lakelink.toml`) and then from \
         `LAKELINK_LLM_<KEY>` environment variables; a bad value stops the process at start. \
         A client session changes the keys marked *session* with \
         `SET lakelink.llm.<key> = '<value>'` (and `RESET`); the others are the operator's.\n\n\
         | key | who sets it | default | meaning |\n| --- | --- | --- | --- |\n",
    );
    for s in SETTINGS {
        let default = match s.default_doc {
            Some(d) => d.to_string(),
            None => defaults.get_key(s.key).unwrap_or_default(),
        };
        let default = if default.is_empty() { "(empty)".to_string() } else { format!("`{default}`") };
        let who = match s.who {
            Who::Session => "session",
            Who::Operator => "operator",
            Who::Scheduler => "scheduler (per query)",
        };
        out.push_str(&format!("| `{}` | {who} | {default} | {} |\n", s.key, one_line(s.doc)));
    }
    out
}

fn function_section(out: &mut String, name: &str, doc: &Documentation) {
    out.push_str(&format!("### `{name}`\n\n{}\n\n```sql\n{}\n```\n\n", one_line(&doc.description), doc.syntax_example));
    if let Some(args) = &doc.arguments {
        out.push_str("| argument | meaning |\n| --- | --- |\n");
        for (arg, meaning) in args {
            out.push_str(&format!("| `{arg}` | {meaning} |\n"));
        }
        out.push('\n');
    }
    if let Some(example) = &doc.sql_example {
        out.push_str(&format!("Example:\n\n```sql\n{example}\n```\n\n"));
    }
}

/// `docs/functions.md`.
pub fn functions_md() -> String {
    let mut out = String::from(
        "# SQL functions\n\n\
         Generated from the functions' own documentation (`documentation()` of each `llm_*` function in \
         `udf/src/functions/`, `lakelink_nl::FUNCTIONS`); do not edit by hand \
         (`UPDATE_DOCS=1 cargo test --test docs` writes it anew).\n\n\
         ## Natural language: compiled once, when the statement is planned\n\n",
    );
    for f in lakelink_nl::FUNCTIONS {
        out.push_str(&format!(
            "### `{}` ({})\n\n{}\n\n```sql\n{}\n```\n\nExample:\n\n```sql\n{}\n```\n\n",
            f.name,
            f.kind,
            one_line(f.description),
            f.syntax,
            f.example
        ));
    }
    out.push_str("## Semantic functions: a model call per distinct input, when the query runs\n\n");
    let mut scalars = lakelink_udf::functions::documentation();
    scalars.sort_by_key(|(name, _)| *name);
    let registered: Vec<String> =
        lakelink_udf::functions::scalar_functions(384).iter().map(|f| f.name().to_string()).collect();
    assert_eq!(registered.len(), scalars.len(), "every registered llm_* function is documented");
    for (name, doc) in scalars {
        function_section(&mut out, name, doc);
    }
    let summarize = datafusion::logical_expr::AggregateUDF::new_from_impl(
        lakelink_udf::functions::LlmSummarize::with_options(LlmOptions::default()),
    );
    let doc = summarize.documentation().expect("llm_summarize has documentation()");
    function_section(&mut out, "llm_summarize (aggregate)", doc);
    out
}
