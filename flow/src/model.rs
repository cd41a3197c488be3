//! The flow's shared vocabulary, below everything that uses it: what the
//! apps run as ([`Flavor`]), the three deployments of the app ([`Role`]),
//! and how to run a flow ([`FlowOptions`]).

use std::time::Duration;

use testbed::{RUNC, Run};

use crate::bindings::{self, InputBinding};
use crate::standin::StandInOptions;

/// The Wasm image: the plain app image (its rootfs holds `app.wasm`), as
/// users build them; compiled once per node (the shim's compile cache).
pub const WASM_IMAGE: &str = "localhost/wasmtime-custom/app:latest";
/// The native baseline's image: `order-app-native` and the libraries it loads.
pub const NATIVE_IMAGE: &str = "localhost/wasmtime-custom/app-native:latest";

/// What the three apps run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// The app component on the wasmtime-custom shim.
    Wasm,
    /// The native baseline under runc.
    Native,
}

impl Flavor {
    pub fn slug(self) -> &'static str {
        match self {
            Flavor::Wasm => "wasm",
            Flavor::Native => "native",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Flavor::Wasm => "Wasm component on wasmtime-custom (io.containerd.wasmtime-custom.v1)",
            Flavor::Native => "native Rust server under runc (io.containerd.runc.v2)",
        }
    }

    /// `ctr run` settings for one app listening on `port`, talking to `dapr_url`.
    pub fn run<'a>(self, id: &'a str, port: u16, dapr_url: &str) -> Run<'a> {
        match self {
            Flavor::Wasm => Run::new(WASM_IMAGE, id).listen(port).env("DAPR_URL", dapr_url),
            Flavor::Native => Run::new(NATIVE_IMAGE, id)
                .runtime(RUNC)
                .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
                .env("DAPR_URL", dapr_url),
        }
    }
}

/// The three deployments of the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Distributor,
    ReceiverExpress,
    ReceiverStandard,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Distributor, Role::ReceiverExpress, Role::ReceiverStandard];

    pub fn name(self) -> &'static str {
        match self {
            Role::Distributor => "distributor",
            Role::ReceiverExpress => "receiver-express",
            Role::ReceiverStandard => "receiver-standard",
        }
    }

    /// The input binding that delivers to this role.
    pub fn input(self) -> InputBinding {
        match self {
            Role::Distributor => bindings::INGRESS,
            Role::ReceiverExpress => bindings::EXPRESS_IN,
            Role::ReceiverStandard => bindings::STANDARD_IN,
        }
    }
}

/// How to run the flow.
#[derive(Debug, Clone)]
pub struct FlowOptions {
    pub orders: u32,
    /// Seed of the generated orders: the same seed gives the same orders.
    pub seed: u64,
    /// Invalid messages put on the ingress queue with the orders.
    pub poison: u32,
    pub standin: StandInOptions,
    /// The longest the flow may take once released.
    pub timeout: Duration,
    /// Draw a progress bar on stderr (only ever on a terminal).
    pub progress: bool,
    /// More environment for every app container, `(name, value)`: for
    /// example `OTEL_EXPORTER_OTLP_ENDPOINT` to see each order's trace.
    pub app_env: Vec<(String, String)>,
}
