//! The shop's (static) product catalog, shared by the services and the
//! traffic generator.

use serde::Serialize;

/// One product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Product {
    /// Stable id, used in orders.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Unit price in cents.
    pub price_cents: u64,
}

/// Everything the shop sells.
pub const PRODUCTS: [Product; 5] = [
    Product {
        id: "p1",
        name: "espresso beans 1kg",
        price_cents: 2490,
    },
    Product {
        id: "p2",
        name: "pour-over kettle",
        price_cents: 4500,
    },
    Product {
        id: "p3",
        name: "ceramic mug",
        price_cents: 1200,
    },
    Product {
        id: "p4",
        name: "burr grinder",
        price_cents: 12900,
    },
    Product {
        id: "p5",
        name: "paper filters x100",
        price_cents: 590,
    },
];

/// The product with id `id`.
pub fn find(id: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|product| product.id == id)
}
