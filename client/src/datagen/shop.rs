//! `lakelink datagen shop`: an online shop (customers, products, orders,
//! order items) and its customer reviews, written as plain sentences.
//!
//! Every review speaks about exactly one topic (`quality`, `delivery`,
//! `price` or `service`) with one sentiment (`positive` or `negative`), both
//! stored beside the text: conditions on the text have a known truth, so
//! the `llm_*` functions' answers can be scored by SQL. Texts repeat across
//! reviews the way real short reviews do (about 10,000 distinct texts).
//! Everything is drawn from a fixed seed: the same scale writes the same lake.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::write_batches;
use crate::error::ClientError;

/// Descriptions and join keys of the shop's tables for the NL compiler.
const CATALOG: &str = include_str!("shop_catalog.toml");
/// Accepted question/SQL examples for the shop lake.
const EXAMPLES: &str = include_str!("shop_examples.jsonl");

/// Rows of each table at scale 1.
const CUSTOMERS: f64 = 20_000.0;
const PRODUCTS: f64 = 2_000.0;
const ORDERS: f64 = 200_000.0;
const REVIEWS: f64 = 50_000.0;

/// The generator's seed.
const SEED: u64 = 0x5eed_0f5b_0b5e_ed01;
/// Days from 1970-01-01 to 2022-01-01 and the span of the shop's dates.
const FIRST_DAY: i32 = 18_993;
const DAYS: u64 = 4 * 365;

/// A small, fixed pseudo-random sequence (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const FIRST_NAMES: &[&str] = &[
    "Ada", "Ben", "Chloe", "Diego", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kara", "Liam", "Maya", "Noah",
    "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yara", "Zoe",
];
const LAST_NAMES: &[&str] = &[
    "Smith", "Garcia", "Mueller", "Rossi", "Tanaka", "Kowalski", "Dubois", "Silva", "Novak", "Jensen", "Okafor",
    "Chen", "Haddad", "Larsen", "Moreau", "Petrov",
];
/// (city, country)
const CITIES: &[(&str, &str)] = &[
    ("Berlin", "Germany"),
    ("Munich", "Germany"),
    ("Paris", "France"),
    ("Lyon", "France"),
    ("Madrid", "Spain"),
    ("Barcelona", "Spain"),
    ("Rome", "Italy"),
    ("Milan", "Italy"),
    ("London", "United Kingdom"),
    ("Manchester", "United Kingdom"),
    ("Warsaw", "Poland"),
    ("Amsterdam", "Netherlands"),
    ("Stockholm", "Sweden"),
    ("Lisbon", "Portugal"),
    ("Vienna", "Austria"),
    ("Dublin", "Ireland"),
];
const SEGMENTS: &[&str] = &["consumer", "consumer", "consumer", "business", "student"];
/// (category, nouns)
const CATEGORIES: &[(&str, &[&str])] = &[
    ("kitchen", &["kettle", "blender", "toaster", "coffee grinder", "frying pan"]),
    ("audio", &["headphones", "speaker", "turntable", "microphone", "soundbar"]),
    ("outdoor", &["tent", "backpack", "sleeping bag", "camping stove", "hiking pole"]),
    ("office", &["desk lamp", "office chair", "keyboard", "monitor stand", "notebook"]),
    ("toys", &["puzzle", "board game", "toy robot", "building set", "kite"]),
    ("garden", &["garden hose", "lawn mower", "pruning shears", "watering can", "planter"]),
    ("fitness", &["yoga mat", "dumbbell set", "jump rope", "fitness tracker", "exercise bike"]),
    ("home", &["vacuum cleaner", "bed sheet set", "wall clock", "air purifier", "table lamp"]),
];
const BRANDS: &[&str] =
    &["Nordic", "Aurora", "Brightline", "Copperleaf", "Everpeak", "Fjord", "Granite", "Helio", "Ivory", "Juniper"];
const PRODUCT_WORDS: &[&str] = &["Classic", "Compact", "Pro", "Mini", "Deluxe", "Eco", "Max", "Lite"];
const STATUSES: &[&str] =
    &["delivered", "delivered", "delivered", "delivered", "shipped", "processing", "cancelled", "returned"];
const CHANNELS: &[&str] = &["web", "web", "app", "app", "store"];

/// The four review topics.
pub const TOPICS: &[&str] = &["quality", "delivery", "price", "service"];

const POSITIVE_OPENERS: &[&str] = &[
    "I absolutely love this {}.",
    "Really happy with my new {}.",
    "This {} is excellent.",
    "Best {} I have ever owned.",
    "So pleased with this {}.",
    "Great {}, exactly what I wanted.",
    "My family adores this {}.",
    "Wonderful {}, no regrets at all.",
];
const NEGATIVE_OPENERS: &[&str] = &[
    "Very disappointed with this {}.",
    "I regret buying this {}.",
    "This {} is terrible.",
    "Worst {} I have ever bought.",
    "Deeply unhappy with this {}.",
    "What a frustrating {}.",
    "I am angry about this {}.",
    "Sadly this {} was a mistake.",
];
/// Per topic: positive details, negative details.
const DETAILS: &[(&[&str], &[&str])] = &[
    (
        &[
            "It feels solid and well made.",
            "The build quality is superb and it works perfectly.",
            "Sturdy materials, it will last for years.",
            "Everything about it is well crafted.",
            "It has worked flawlessly every single day.",
        ],
        &[
            "It broke after a week and the plastic cracked.",
            "The build quality is awful and it stopped working.",
            "Cheap materials, it fell apart quickly.",
            "The switch snapped off on the second day.",
            "It is badly made and already falling to pieces.",
        ],
    ),
    (
        &[
            "The parcel arrived two days early and well packed.",
            "Delivery was fast and the courier was friendly.",
            "Shipping was quick and tracking was accurate.",
            "It was delivered the very next morning.",
            "The package came on time and in perfect shape.",
        ],
        &[
            "The parcel arrived three weeks late with a crushed box.",
            "Delivery took forever and the courier lost it twice.",
            "Shipping was painfully slow and tracking never updated.",
            "It was delivered to the wrong address.",
            "The package came late and soaked by rain.",
        ],
    ),
    (
        &[
            "Great value for the money.",
            "The price was a bargain for what you get.",
            "Cheaper than anywhere else and worth every cent.",
            "An affordable price for such a product.",
            "I paid very little and got a lot.",
        ],
        &[
            "Way too expensive for what you get.",
            "The price is a rip-off.",
            "Overpriced, it costs twice what it is worth.",
            "I paid far too much for it.",
            "Not worth the money at all.",
        ],
    ),
    (
        &[
            "Customer support answered within minutes and solved everything.",
            "The staff were kind and very helpful.",
            "The service team replaced a part without any fuss.",
            "Support was patient and friendly on the phone.",
            "The seller answered all my questions quickly.",
        ],
        &[
            "Customer support never answered my emails.",
            "The staff were rude and unhelpful.",
            "The service team refused to help with my problem.",
            "Support kept me on hold for an hour and hung up.",
            "The seller ignored all my questions.",
        ],
    ),
];
const POSITIVE_CLOSERS: &[&str] =
    &["Would recommend!", "Five stars.", "I would buy it again.", "", "Highly recommended."];
const NEGATIVE_CLOSERS: &[&str] = &["Do not buy.", "Returning it.", "Never again.", "", "Avoid it."];

/// One generated review: its text and the truth about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    /// The text.
    pub text: String,
    /// `positive` or `negative`.
    pub sentiment: &'static str,
    /// One of [`TOPICS`].
    pub topic: &'static str,
    /// 4-5 for positive reviews, 1-2 for negative ones.
    pub stars: i32,
}

/// A review of a product called a `noun`, drawn from `rng`.
fn review(rng: &mut Rng, noun: &str) -> Review {
    let positive = rng.below(100) < 55;
    let topic_index = rng.below(TOPICS.len() as u64) as usize;
    let (good, bad) = DETAILS[topic_index];
    let (opener, detail, closer) = if positive {
        (rng.pick(POSITIVE_OPENERS), rng.pick(good), rng.pick(POSITIVE_CLOSERS))
    } else {
        (rng.pick(NEGATIVE_OPENERS), rng.pick(bad), rng.pick(NEGATIVE_CLOSERS))
    };
    let mut text = format!("{} {detail}", opener.replace("{}", noun));
    if !closer.is_empty() {
        text.push(' ');
        text.push_str(closer);
    }
    let stars = if positive { 4 + rng.below(2) as i32 } else { 1 + rng.below(2) as i32 };
    Review { text, sentiment: if positive { "positive" } else { "negative" }, topic: TOPICS[topic_index], stars }
}

/// The nouns the shop's products (and their reviews) are named by, such as
/// `kettle` or `yoga mat`.
pub fn product_nouns() -> Vec<&'static str> {
    CATEGORIES.iter().flat_map(|(_, nouns)| nouns.iter().copied()).collect()
}

/// `n` reviews of products drawn from the shop's nouns, from a fixed seed:
/// a labelled set for measuring the `llm_*` functions.
pub fn sample_reviews(n: usize, seed: u64) -> Vec<Review> {
    let mut rng = Rng(seed);
    let nouns = product_nouns();
    (0..n)
        .map(|_| {
            let noun = rng.pick(&nouns);
            review(&mut rng, noun)
        })
        .collect()
}

fn day(rng: &mut Rng) -> i32 {
    FIRST_DAY + rng.below(DAYS) as i32
}

fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn batch(fields: Vec<(&str, DataType)>, columns: Vec<ArrayRef>) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = Arc::new(Schema::new(fields.into_iter().map(|(n, t)| Field::new(n, t, false)).collect::<Vec<_>>()));
    RecordBatch::try_new(schema, columns)
}

fn text(values: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

/// Generates the shop lake at `scale` into `out`; returns (table, files, rows) per table.
pub fn shop(scale: f64, out: &Path) -> Result<Vec<(String, usize, usize)>, ClientError> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(ClientError::Usage(format!("scale factor must be a positive number, got {scale}")));
    }
    let count = |n: f64| ((n * scale).round() as usize).max(10);
    let (customers, products, orders, reviews) = (count(CUSTOMERS), count(PRODUCTS), count(ORDERS), count(REVIEWS));
    let mut rng = Rng(SEED);
    let arrow_err = |e: arrow::error::ArrowError| ClientError::Usage(format!("generating the shop lake failed: {e}"));
    let mut tables: Vec<(&str, RecordBatch)> = Vec::new();

    // Customers.
    let mut c = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for id in 1..=customers as i64 {
        let (first, last) = (rng.pick(FIRST_NAMES), rng.pick(LAST_NAMES));
        let (city, country) = CITIES[rng.below(CITIES.len() as u64) as usize];
        c.0.push(id);
        c.1.push(format!("{first} {last}"));
        c.2.push(format!("{}.{}{id}@example.com", first.to_lowercase(), last.to_lowercase()));
        c.3.push(city.to_string());
        c.4.push(country.to_string());
        c.5.push(rng.pick(SEGMENTS).to_string());
        c.6.push(day(&mut rng));
    }
    tables.push((
        "customers",
        batch(
            vec![
                ("customer_id", DataType::Int64),
                ("name", DataType::Utf8),
                ("email", DataType::Utf8),
                ("city", DataType::Utf8),
                ("country", DataType::Utf8),
                ("segment", DataType::Utf8),
                ("signup_date", DataType::Date32),
            ],
            vec![
                Arc::new(Int64Array::from(c.0)),
                text(c.1),
                text(c.2),
                text(c.3),
                text(c.4),
                text(c.5),
                Arc::new(Date32Array::from(c.6)),
            ],
        )
        .map_err(arrow_err)?,
    ));

    // Products: (noun, price) kept for orders and reviews.
    let mut catalog: Vec<(&str, f64)> = Vec::with_capacity(products);
    let mut p = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for id in 1..=products as i64 {
        let (category, nouns) = CATEGORIES[rng.below(CATEGORIES.len() as u64) as usize];
        let noun = rng.pick(nouns);
        let brand = rng.pick(BRANDS);
        let price = cents(5.0 + rng.unit() * 295.0);
        let mut name = format!("{brand} {} {noun}", rng.pick(PRODUCT_WORDS));
        name = name.split(' ').map(capitalize).collect::<Vec<_>>().join(" ");
        p.0.push(id);
        p.1.push(name);
        p.2.push(category.to_string());
        p.3.push(brand.to_string());
        p.4.push(price);
        catalog.push((noun, price));
    }
    tables.push((
        "products",
        batch(
            vec![
                ("product_id", DataType::Int64),
                ("name", DataType::Utf8),
                ("category", DataType::Utf8),
                ("brand", DataType::Utf8),
                ("price", DataType::Float64),
            ],
            vec![Arc::new(Int64Array::from(p.0)), text(p.1), text(p.2), text(p.3), Arc::new(Float64Array::from(p.4))],
        )
        .map_err(arrow_err)?,
    ));

    // Orders and their items.
    let mut o = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut i = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for id in 1..=orders as i64 {
        o.0.push(id);
        o.1.push(1 + rng.below(customers as u64) as i64);
        o.2.push(day(&mut rng));
        o.3.push(rng.pick(STATUSES).to_string());
        o.4.push(rng.pick(CHANNELS).to_string());
        o.5.push(cents([0.0, 0.0, 4.99, 9.99][rng.below(4) as usize]));
        for line in 1..=(1 + rng.below(4) as i32) {
            let product = rng.below(products as u64) as usize;
            i.0.push(id);
            i.1.push(line);
            i.2.push(product as i64 + 1);
            i.3.push(1 + rng.below(3) as i32);
            i.4.push(catalog[product].1);
            i.5.push([0.0, 0.0, 0.0, 0.05, 0.1, 0.2][rng.below(6) as usize]);
        }
    }
    tables.push((
        "orders",
        batch(
            vec![
                ("order_id", DataType::Int64),
                ("customer_id", DataType::Int64),
                ("order_date", DataType::Date32),
                ("status", DataType::Utf8),
                ("channel", DataType::Utf8),
                ("shipping_cost", DataType::Float64),
            ],
            vec![
                Arc::new(Int64Array::from(o.0)),
                Arc::new(Int64Array::from(o.1)),
                Arc::new(Date32Array::from(o.2)),
                text(o.3),
                text(o.4),
                Arc::new(Float64Array::from(o.5)),
            ],
        )
        .map_err(arrow_err)?,
    ));
    tables.push((
        "order_items",
        batch(
            vec![
                ("order_id", DataType::Int64),
                ("line_number", DataType::Int32),
                ("product_id", DataType::Int64),
                ("quantity", DataType::Int32),
                ("unit_price", DataType::Float64),
                ("discount", DataType::Float64),
            ],
            vec![
                Arc::new(Int64Array::from(i.0)),
                Arc::new(Int32Array::from(i.1)),
                Arc::new(Int64Array::from(i.2)),
                Arc::new(Int32Array::from(i.3)),
                Arc::new(Float64Array::from(i.4)),
                Arc::new(Float64Array::from(i.5)),
            ],
        )
        .map_err(arrow_err)?,
    ));

    // Reviews.
    let mut r = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for id in 1..=reviews as i64 {
        let product = rng.below(products as u64) as usize;
        let written = review(&mut rng, catalog[product].0);
        r.0.push(id);
        r.1.push(product as i64 + 1);
        r.2.push(1 + rng.below(customers as u64) as i64);
        r.3.push(day(&mut rng));
        r.4.push(written.stars);
        r.5.push(written.text);
        r.6.push(written.sentiment.to_string());
        r.7.push(written.topic.to_string());
    }
    tables.push((
        "reviews",
        batch(
            vec![
                ("review_id", DataType::Int64),
                ("product_id", DataType::Int64),
                ("customer_id", DataType::Int64),
                ("review_date", DataType::Date32),
                ("stars", DataType::Int32),
                ("review", DataType::Utf8),
                ("sentiment", DataType::Utf8),
                ("topic", DataType::Utf8),
            ],
            vec![
                Arc::new(Int64Array::from(r.0)),
                Arc::new(Int64Array::from(r.1)),
                Arc::new(Int64Array::from(r.2)),
                Arc::new(Date32Array::from(r.3)),
                Arc::new(Int32Array::from(r.4)),
                text(r.5),
                text(r.6),
                text(r.7),
            ],
        )
        .map_err(arrow_err)?,
    ));

    std::fs::create_dir_all(out).map_err(|e| ClientError::Io { path: out.to_path_buf(), source: e })?;
    let mut summary = Vec::new();
    for (name, whole) in tables {
        let dir = out.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| ClientError::Io { path: dir.clone(), source: e })?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| ClientError::Io { path: dir.clone(), source: e })?;
        // Two files for every table of more than a few thousand rows.
        let parts = if whole.num_rows() < 5_000 { 1 } else { 2 };
        let per = whole.num_rows().div_ceil(parts);
        let mut rows = 0;
        for part in 0..parts {
            let slice = whole.slice(part * per, per.min(whole.num_rows() - part * per));
            rows += write_batches(&dir.join(format!("part-{part}.parquet")), whole.schema(), [Ok(slice)])?;
        }
        summary.push((name.to_string(), parts, rows));
    }
    let metadata = out.join("_lakelink");
    std::fs::create_dir_all(&metadata).map_err(|e| ClientError::Io { path: metadata.clone(), source: e })?;
    let catalog_file = metadata.join("catalog.toml");
    std::fs::write(&catalog_file, CATALOG).map_err(|e| ClientError::Io { path: catalog_file, source: e })?;
    let examples = metadata.join("nl_examples.jsonl");
    if !examples.exists() {
        std::fs::write(&examples, EXAMPLES).map_err(|e| ClientError::Io { path: examples, source: e })?;
    }
    Ok(summary)
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_carry_their_truth_and_repeat_like_real_ones() {
        let reviews = sample_reviews(2_000, 7);
        assert_eq!(reviews, sample_reviews(2_000, 7), "the same seed writes the same reviews");
        let positive = reviews.iter().filter(|r| r.sentiment == "positive").count();
        assert!((900..1_300).contains(&positive), "{positive} of 2000 positive");
        let nouns: Vec<&str> = CATEGORIES.iter().flat_map(|(_, n)| n.iter().copied()).collect();
        for r in &reviews {
            let opener_positive =
                POSITIVE_OPENERS.iter().any(|o| nouns.iter().any(|n| r.text.starts_with(&o.replace("{}", n))));
            assert_eq!(opener_positive, r.sentiment == "positive", "{r:?}");
            assert!(TOPICS.contains(&r.topic) && (1..=5).contains(&r.stars), "{r:?}");
        }
        let distinct: std::collections::HashSet<&str> = reviews.iter().map(|r| r.text.as_str()).collect();
        assert!(distinct.len() > 1_000, "{} distinct texts", distinct.len());
    }

    #[test]
    fn the_lake_has_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let summary = shop(0.01, dir.path()).unwrap();
        let names: Vec<&str> = summary.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["customers", "products", "orders", "order_items", "reviews"]);
        assert!(dir.path().join("_lakelink/catalog.toml").is_file());
        assert!(summary.iter().all(|(_, files, rows)| *files >= 1 && *rows >= 10));
    }
}
