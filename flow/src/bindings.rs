//! The app's Dapr bindings, by name: which queue each input binding reads
//! and which route of the app it delivers to, the output bindings onto the
//! queues, and the blob outboxes. The stand-in serves them; the roles and
//! the report refer to them by these constants, never by a second copy of
//! the names.

/// An input binding: the queue it reads and the app route it delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputBinding {
    pub name: &'static str,
    pub queue: &'static str,
    pub route: &'static str,
}

/// The ingress queue, delivered to the distributor.
pub const INGRESS: InputBinding =
    InputBinding { name: "q-order-ingress", queue: "q-order-ingress", route: "/q-order-ingress" };
/// The express queue, delivered to receiver-express.
pub const EXPRESS_IN: InputBinding =
    InputBinding { name: "q-order-express-in", queue: "q-order-express", route: "/q-order-express-in" };
/// The standard queue, delivered to receiver-standard.
pub const STANDARD_IN: InputBinding =
    InputBinding { name: "q-order-standard-in", queue: "q-order-standard", route: "/q-order-standard-in" };

/// Every input binding, in the order of the flow.
pub const INPUTS: [InputBinding; 3] = [INGRESS, EXPRESS_IN, STANDARD_IN];

/// An output binding that puts its `data` on a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOutput {
    pub name: &'static str,
    pub queue: &'static str,
}

/// The distributor's outputs, one per delivery.
pub const QUEUE_OUTPUTS: [QueueOutput; 2] = [
    QueueOutput { name: "q-order-express-out", queue: EXPRESS_IN.queue },
    QueueOutput { name: "q-order-standard-out", queue: STANDARD_IN.queue },
];

/// Output bindings into a blob container (a folder here), one per receiver.
pub const OUTBOXES: [&str; 2] = ["express-outbox", "standard-outbox"];
