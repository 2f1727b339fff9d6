//! The dialect-neutral transactions the generator invents, with amounts that add up exactly.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::dialect::Dialect;

/// Sales tax rate applied to taxable merchandise (fuel is untaxed at the pump in this corpus).
const TAX_RATE: Decimal = Decimal::from_parts(7, 0, 0, false, 2);

pub(crate) struct Item {
    pub code: &'static str,
    pub description: &'static str,
    pub department: u32,
    pub price_cents: i64,
}

/// A small convenience-store catalogue.
pub(crate) const CATALOG: &[Item] = &[
    Item { code: "004900000634", description: "COCA COLA 20OZ", department: 2, price_cents: 229 },
    Item { code: "001200000129", description: "PEPSI 20OZ", department: 2, price_cents: 219 },
    Item { code: "007800000965", description: "DR PEPPER 2L", department: 2, price_cents: 349 },
    Item { code: "001820000016", description: "BUDWEISER 12PK", department: 3, price_cents: 1499 },
    Item { code: "002840000005", description: "LAYS CLASSIC", department: 5, price_cents: 199 },
    Item { code: "004000000044", description: "SNICKERS BAR", department: 5, price_cents: 149 },
    Item { code: "002200000034", description: "WRIGLEY GUM", department: 5, price_cents: 119 },
    Item { code: "001070000012", description: "MARLBORO RED", department: 4, price_cents: 899 },
    Item { code: "007084700001", description: "COFFEE 16OZ", department: 7, price_cents: 189 },
    Item { code: "000000000412", description: "HOT DOG", department: 7, price_cents: 249 },
    Item { code: "001600027526", description: "CHEERIOS 12OZ", department: 8, price_cents: 479 },
    Item { code: "007874200003", description: "WATER 1L", department: 2, price_cents: 159 },
    Item { code: "004133300001", description: "ICE 10LB", department: 9, price_cents: 399 },
    Item { code: "003700000310", description: "MOTOR OIL 1QT", department: 10, price_cents: 799 },
    Item { code: "002113000001", description: "ENERGY DRINK 16OZ", department: 2, price_cents: 329 },
    Item { code: "004470000001", description: "BEEF JERKY", department: 5, price_cents: 699 },
];

pub(crate) struct Grade {
    pub id: &'static str,
    pub name: &'static str,
    pub price_thousandths: i64,
}

pub(crate) const GRADES: &[Grade] = &[
    Grade { id: "001", name: "REGULAR", price_thousandths: 3299 },
    Grade { id: "002", name: "PLUS", price_thousandths: 3599 },
    Grade { id: "003", name: "PREMIUM", price_thousandths: 3899 },
    Grade { id: "019", name: "DIESEL", price_thousandths: 4159 },
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum GenKind {
    Sale,
    NoSale,
    Journal,
}

#[derive(Clone)]
pub(crate) struct GenLine {
    pub item: Option<&'static Item>,
    pub grade: Option<&'static Grade>,
    pub fuel_position: u32,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    pub extended: Decimal,
    pub tax: Decimal,
    pub discount: Option<GenDiscount>,
}

#[derive(Clone)]
pub(crate) struct GenDiscount {
    pub promotion_id: String,
    pub description: &'static str,
    pub amount: Decimal,
}

#[derive(Clone)]
pub(crate) struct GenTx {
    pub site: String,
    pub business_date: NaiveDate,
    pub register: u32,
    pub sequence: u64,
    pub cashier: u32,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    pub kind: GenKind,
    /// A Verifone rollback mirror of the transaction before it (same register and sequence).
    pub rollback_mirror: bool,
    pub lines: Vec<GenLine>,
}

impl GenTx {
    pub fn gross(&self) -> Decimal {
        self.lines.iter().map(|l| l.extended).sum()
    }

    pub fn discounts(&self) -> Decimal {
        self.lines.iter().filter_map(|l| l.discount.as_ref()).map(|d| d.amount).sum()
    }

    pub fn net(&self) -> Decimal {
        self.gross() - self.discounts()
    }

    pub fn tax(&self) -> Decimal {
        self.lines.iter().map(|l| l.tax).sum()
    }

    pub fn total(&self) -> Decimal {
        self.net() + self.tax()
    }

    /// The key the parser must produce, in [`crate::model::TransactionKey::canonical`] form.
    pub fn canonical_key(&self, dialect: Dialect) -> String {
        let seq = self.sequence_text(dialect);
        let mut key = format!("{}|{}|{}|{}", self.site, self.business_date.format("%Y-%m-%d"), self.register, seq);
        if self.rollback_mirror {
            key.push_str("|rollback");
        } else if dialect == Dialect::VerifoneCommander && self.kind == GenKind::Journal {
            // Verifone journal records have no ticket number: keyed by the terminal message number.
            key.push_str("|message");
        }
        key
    }

    /// NAXML transaction ids embed the register (register 101 → 1010106); others number per register from 1.
    pub fn sequence_text(&self, dialect: Dialect) -> String {
        match dialect {
            Dialect::NaxmlPassport | Dialect::ConexxusNaxml => {
                format!("{}{:04}", self.register, self.sequence)
            }
            _ => self.sequence.to_string(),
        }
    }
}

/// Invents one transaction. `fuel`: whether the dialect's sites sell fuel.
pub(crate) fn transaction(
    rng: &mut ChaCha8Rng,
    site: &str,
    date: NaiveDate,
    register: u32,
    sequence: u64,
    fuel: bool,
) -> GenTx {
    let minute = rng.random_range(6 * 60..23 * 60);
    let start =
        date.and_time(NaiveTime::from_hms_opt(minute / 60, minute % 60, rng.random_range(0..60)).unwrap_or_default());
    let end = start + chrono::Duration::seconds(rng.random_range(15..240));
    let roll = rng.random_range(0..100);
    let kind = match roll {
        0 => GenKind::NoSale,
        1 => GenKind::Journal,
        _ => GenKind::Sale,
    };
    let mut lines = Vec::new();
    if kind == GenKind::Sale {
        if fuel && rng.random_range(0..100) < 35 {
            lines.push(fuel_line(rng));
        }
        let n = rng.random_range(1..=4);
        for _ in 0..n {
            lines.push(item_line(rng));
        }
    }
    GenTx {
        site: site.to_owned(),
        business_date: date,
        register,
        sequence,
        cashier: rng.random_range(10..40),
        start,
        end,
        kind,
        rollback_mirror: false,
        lines,
    }
}

fn item_line(rng: &mut ChaCha8Rng) -> GenLine {
    let item = &CATALOG[rng.random_range(0..CATALOG.len())];
    let quantity = Decimal::from(rng.random_range(1..=3));
    let unit_price = Decimal::new(item.price_cents, 2);
    let extended = quantity * unit_price;
    let discount = (rng.random_range(0..100) < 15).then(|| GenDiscount {
        promotion_id: format!("MM-{:04}", rng.random_range(1..60)),
        description: "MIX AND MATCH",
        amount: Decimal::new(rng.random_range(10..=(item.price_cents / 3).max(11)), 2).min(extended),
    });
    let net = extended - discount.as_ref().map_or(Decimal::ZERO, |d| d.amount);
    let tax = (net * TAX_RATE).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    GenLine { item: Some(item), grade: None, fuel_position: 0, quantity, unit_price, extended, tax, discount }
}

fn fuel_line(rng: &mut ChaCha8Rng) -> GenLine {
    let grade = &GRADES[rng.random_range(0..GRADES.len())];
    let volume = Decimal::new(rng.random_range(2_000..25_000), 3);
    let unit_price = Decimal::new(grade.price_thousandths, 3);
    let extended = (volume * unit_price).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    GenLine {
        item: None,
        grade: Some(grade),
        fuel_position: rng.random_range(1..=12),
        quantity: volume,
        unit_price,
        extended,
        tax: Decimal::ZERO,
        discount: None,
    }
}
