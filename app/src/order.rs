//! The `Order` message and the exact payloads sent to Dapr's bindings API.

use serde::{Deserialize, Deserializer, Serialize};

/// How an order is shipped; it picks the queue the distributor writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Delivery {
    Express,
    Standard,
}

impl Delivery {
    /// The lower-case name used in binding names (`q-order-express-out`, ...).
    pub fn slug(self) -> &'static str {
        match self {
            Delivery::Express => "express",
            Delivery::Standard => "standard",
        }
    }
}

impl<'de> Deserialize<'de> for Delivery {
    /// Accepts any letter case on input ("express", "EXPRESS"), as senders differ.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        match raw.to_ascii_lowercase().as_str() {
            "express" => Ok(Delivery::Express),
            "standard" => Ok(Delivery::Standard),
            _ => Err(serde::de::Error::custom(format!(
                "unknown delivery {raw:?}: expected \"Express\" or \"Standard\""
            ))),
        }
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub order_item_id: u32,
    pub sku: String,
    pub quantity: u32,
}

/// An order as it travels through the queues. Unknown fields are ignored on
/// input; absent optional fields are omitted again on output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    pub delivery: Delivery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<OrderItem>>,
}

impl Order {
    /// Parses a request body; the error reads well as a 400 response body.
    pub fn parse(body: &[u8]) -> Result<Order, String> {
        serde_json::from_slice(body).map_err(|e| format!("invalid order: {e}"))
    }
}

/// Where an order goes next and the exact JSON body to send there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingCall {
    /// Dapr output binding name, e.g. `q-order-express-out`.
    pub binding: String,
    /// The request body for `POST /v1.0/bindings/{binding}`.
    pub body: Vec<u8>,
}

#[derive(Serialize)]
struct BindingRequest<'a> {
    data: &'a Order,
    operation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<BlobMetadata>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlobMetadata {
    blob_name: String,
}

fn binding_call(binding: String, request: &BindingRequest<'_>) -> BindingCall {
    // Serialising a struct of strings, integers and options cannot fail.
    let body = serde_json::to_vec(request).expect("an Order always serialises");
    BindingCall { binding, body }
}

/// The distributor's output: the order onto its delivery's queue.
pub fn distribute(order: &Order) -> BindingCall {
    let request = BindingRequest { data: order, operation: "create", metadata: None };
    binding_call(format!("q-order-{}-out", order.delivery.slug()), &request)
}

/// A receiver's output: the order as a blob named by its id, into the outbox
/// of the receiver's own delivery kind (the route decides, not the order).
pub fn store(order: &Order, outbox: Delivery) -> BindingCall {
    let metadata = BlobMetadata { blob_name: order.order_id.to_string() };
    let request = BindingRequest { data: order, operation: "create", metadata: Some(metadata) };
    binding_call(format!("{}-outbox", outbox.slug()), &request)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"orderId":7,"orderGuid":"4f1c","description":"five word slug here now","firstName":"Ada","lastName":"Lovelace","delivery":"Express","items":[{"orderItemId":1,"sku":"abcdef12-3456","quantity":3}]}"#;

    #[test]
    fn full_express_order_round_trips_byte_for_byte() {
        let order = Order::parse(FULL.as_bytes()).unwrap();
        assert_eq!(order.delivery, Delivery::Express);
        assert_eq!(serde_json::to_string(&order).unwrap(), FULL);
    }

    #[test]
    fn minimal_standard_order_omits_absent_optionals() {
        let order = Order::parse(br#"{"orderId":1,"delivery":"Standard"}"#).unwrap();
        assert_eq!(order.delivery, Delivery::Standard);
        assert_eq!(serde_json::to_string(&order).unwrap(), r#"{"orderId":1,"delivery":"Standard"}"#);
    }

    #[test]
    fn delivery_is_case_insensitive_and_normalised_on_output() {
        let order = Order::parse(br#"{"orderId":2,"delivery":"eXpReSs"}"#).unwrap();
        assert_eq!(serde_json::to_string(&order).unwrap(), r#"{"orderId":2,"delivery":"Express"}"#);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let order = Order::parse(br#"{"orderId":3,"delivery":"standard","coupon":"X"}"#).unwrap();
        assert_eq!(order.order_id, 3);
    }

    #[test]
    fn unknown_delivery_is_rejected_with_its_value() {
        let err = Order::parse(br#"{"orderId":3,"delivery":"Overnight"}"#).unwrap_err();
        assert!(err.contains("unknown delivery \"Overnight\""), "{err}");
    }

    #[test]
    fn missing_required_fields_are_rejected_by_name() {
        let err = Order::parse(br#"{"delivery":"Express"}"#).unwrap_err();
        assert!(err.contains("missing field `orderId`"), "{err}");
        let err = Order::parse(br#"{"orderId":1}"#).unwrap_err();
        assert!(err.contains("missing field `delivery`"), "{err}");
        let err =
            Order::parse(br#"{"orderId":1,"delivery":"Express","items":[{"orderItemId":1,"sku":"a"}]}"#)
                .unwrap_err();
        assert!(err.contains("missing field `quantity`"), "{err}");
    }

    #[test]
    fn wrong_types_are_rejected() {
        for body in [
            r#"{"orderId":"7","delivery":"Express"}"#,
            r#"{"orderId":-1,"delivery":"Express"}"#,
            r#"{"orderId":4294967296,"delivery":"Express"}"#,
            r#"{"orderId":7,"delivery":1}"#,
            r#"{"orderId":7,"delivery":"Express","items":{}}"#,
            r#"[1,2]"#,
            "not json",
            "",
        ] {
            assert!(Order::parse(body.as_bytes()).is_err(), "accepted {body:?}");
        }
    }

    #[test]
    fn distributor_payload_is_exact() {
        let order = Order::parse(br#"{"orderId":5,"delivery":"standard","firstName":"Bo"}"#).unwrap();
        let call = distribute(&order);
        assert_eq!(call.binding, "q-order-standard-out");
        assert_eq!(
            String::from_utf8(call.body).unwrap(),
            r#"{"data":{"orderId":5,"firstName":"Bo","delivery":"Standard"},"operation":"create"}"#
        );
        let express = Order::parse(br#"{"orderId":6,"delivery":"Express"}"#).unwrap();
        assert_eq!(distribute(&express).binding, "q-order-express-out");
    }

    #[test]
    fn receiver_payload_names_the_blob_after_the_order() {
        let order = Order::parse(FULL.as_bytes()).unwrap();
        let call = store(&order, Delivery::Express);
        assert_eq!(call.binding, "express-outbox");
        assert_eq!(
            String::from_utf8(call.body).unwrap(),
            format!(r#"{{"data":{FULL},"operation":"create","metadata":{{"blobName":"7"}}}}"#)
        );
    }
}
