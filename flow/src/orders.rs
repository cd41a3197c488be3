//! Test data with the reference generator's shape (`app/CONTRACT.md`):
//! orderId 1..N, a UUID orderGuid, a five-word slug description, first and
//! last names, delivery Express or Standard with equal odds, and 1..10 items
//! (orderItemId 1..n, sku the first 13 characters of a UUID, quantity 0..10).
//!
//! The data is reproducible from a seed, so the Wasm and the native run of a
//! benchmark process the same orders. Poison messages (bodies that are not
//! valid orders) can be added to exercise dead-lettering.

use app::order::{Delivery, Order, OrderItem};

/// splitmix64: small, fast, and good enough to spread test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u32, high: u32) -> u32 {
        low + (self.next() % u64::from(high - low + 1)) as u32
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }

    /// A version 4 UUID in its usual text form.
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        let a = (a & !0xF000) | 0x4000; // version 4
        let b = (b & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xFFFF,
            a & 0xFFFF,
            b >> 48,
            b & 0xFFFF_FFFF_FFFF
        )
    }
}

const WORDS: [&str; 24] = [
    "amber", "basket", "copper", "delta", "ember", "fable", "garnet", "harbor", "island", "jasper", "kettle",
    "lantern", "meadow", "nickel", "orchard", "pepper", "quarry", "river", "saddle", "timber", "umber",
    "valley", "willow", "zephyr",
];
const FIRST_NAMES: [&str; 12] =
    ["Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luca"];
const LAST_NAMES: [&str; 12] = [
    "Adler",
    "Brandt",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lindqvist",
];

/// `count` orders with ids 1..=count, the same for the same `seed`.
pub fn generate(count: u32, seed: u64) -> Vec<Order> {
    let mut rng = Rng(seed);
    (1..=count)
        .map(|order_id| {
            let description = (0..5).map(|_| rng.pick(&WORDS)).collect::<Vec<_>>().join("-");
            let delivery = if rng.next().is_multiple_of(2) { Delivery::Express } else { Delivery::Standard };
            let items = (1..=rng.between(1, 10))
                .map(|order_item_id| OrderItem {
                    order_item_id,
                    sku: rng.uuid()[..13].to_string(),
                    quantity: rng.between(0, 10),
                })
                .collect();
            Order {
                order_id,
                order_guid: Some(rng.uuid()),
                description: Some(description),
                first_name: Some(rng.pick(&FIRST_NAMES).to_string()),
                last_name: Some(rng.pick(&LAST_NAMES).to_string()),
                delivery,
                items: Some(items),
            }
        })
        .collect()
}

/// `count` message bodies that are not valid orders, of the kinds a queue
/// sees in practice: an unknown delivery, a wrong type, a missing field,
/// and bytes that are not JSON at all.
pub fn poison(count: u32) -> Vec<Vec<u8>> {
    (1..=count)
        .map(|i| {
            let body = match i % 4 {
                1 => format!(r#"{{"orderId":{},"delivery":"Drone"}}"#, 4_000_000_000u32 + i),
                2 => format!(r#"{{"orderId":"poison-{i}","delivery":"Express"}}"#),
                3 => format!(r#"{{"orderGuid":"poison-{i}","delivery":"Standard"}}"#),
                _ => format!("poison {i}: not JSON"),
            };
            body.into_bytes()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_have_the_reference_shape() {
        let orders = generate(2000, 7);
        assert_eq!(orders.len(), 2000);
        for (i, order) in orders.iter().enumerate() {
            assert_eq!(order.order_id as usize, i + 1);
            let guid = order.order_guid.as_deref().unwrap();
            assert_eq!((guid.len(), guid.as_bytes()[14]), (36, b'4'), "{guid}");
            assert_eq!(order.description.as_deref().unwrap().split('-').count(), 5);
            let items = order.items.as_deref().unwrap();
            assert!((1..=10).contains(&items.len()));
            for (n, item) in items.iter().enumerate() {
                assert_eq!(item.order_item_id as usize, n + 1);
                assert_eq!(item.sku.len(), 13);
                assert!(item.quantity <= 10);
            }
        }
        let express = orders.iter().filter(|o| o.delivery == Delivery::Express).count();
        assert!((900..1100).contains(&express), "express {express} of 2000 is not about half");
    }

    #[test]
    fn orders_serialise_with_the_contracts_field_names() {
        // Written out by hand from app/CONTRACT.md, not derived from
        // `Order`: the generator, the app and the checker share that type.
        let value = serde_json::to_value(&generate(1, 5)[0]).unwrap();
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected =
            ["orderId", "orderGuid", "description", "firstName", "lastName", "delivery", "items"];
        expected.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, expected);
        assert!(["Express", "Standard"].contains(&value["delivery"].as_str().unwrap()));
        let item = value["items"][0].as_object().unwrap();
        let mut item_keys: Vec<&str> = item.keys().map(String::as_str).collect();
        item_keys.sort();
        assert_eq!(item_keys, ["orderItemId", "quantity", "sku"]);
    }

    #[test]
    fn same_seed_same_orders_other_seed_other_orders() {
        assert_eq!(generate(50, 1), generate(50, 1));
        assert_ne!(generate(50, 1), generate(50, 2));
    }

    #[test]
    fn generated_orders_are_valid_and_poison_is_not() {
        for order in generate(20, 3) {
            let body = serde_json::to_vec(&order).unwrap();
            assert_eq!(Order::parse(&body).unwrap(), order);
        }
        for body in poison(8) {
            assert!(Order::parse(&body).is_err(), "{}", String::from_utf8_lossy(&body));
        }
    }
}
