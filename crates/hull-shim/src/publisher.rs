//! Task events back to containerd: `containerd.services.events.ttrpc.v1.Events/Forward`
//! on `TTRPC_ADDRESS`, from one thread fed in order (TaskStart must reach containerd
//! before the same task's TaskExit), so that no task call waits on containerd.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageFull;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context;
use containerd_shim_protos::{Client, EventsClient};

use crate::reaper::lock;

/// Each delivery's timeout and how often it is tried, as Go shims' RemoteEventsPublisher.
const TIMEOUT: Duration = Duration::from_secs(5);
const TRIES: u32 = 5;

/// An event with its topic.
pub struct Event {
    topic: &'static str,
    event: Any,
}

/// The events a task publishes, each with its topic.
pub trait Topic: MessageFull {
    const TOPIC: &'static str;
}

macro_rules! topic {
    ($($t:ty => $topic:ident),* $(,)?) => {
        $(impl Topic for $t { const TOPIC: &'static str = topics::$topic; })*
    };
}

topic!(
    TaskCreate => TASK_CREATE_EVENT_TOPIC,
    TaskStart => TASK_START_EVENT_TOPIC,
    TaskExit => TASK_EXIT_EVENT_TOPIC,
    TaskDelete => TASK_DELETE_EVENT_TOPIC,
    TaskOOM => TASK_OOM_EVENT_TOPIC,
    TaskExecAdded => TASK_EXEC_ADDED_EVENT_TOPIC,
    TaskExecStarted => TASK_EXEC_STARTED_EVENT_TOPIC,
    TaskPaused => TASK_PAUSED_EVENT_TOPIC,
    TaskResumed => TASK_RESUMED_EVENT_TOPIC,
);

/// An Any as containerd's typeurl reads it: the message's full name, no URL prefix.
pub fn to_any<M: MessageFull>(m: &M) -> Any {
    let mut any = Any::new();
    any.type_url = M::descriptor().full_name().to_string();
    any.value = m.write_to_bytes().unwrap_or_default();
    any
}

pub struct Publisher {
    tx: Mutex<Option<Sender<Event>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Publisher {
    /// Forwards to `address` (containerd's ttrpc socket) under `namespace`.
    pub fn start(address: String, namespace: String) -> Publisher {
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || forward_all(&address, &namespace, rx))
            .ok();
        Publisher {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
        }
    }

    pub fn publish<M: Topic>(&self, m: M) {
        let ev = Event {
            topic: M::TOPIC,
            event: to_any(&m),
        };
        if let Some(tx) = lock(&self.tx).as_ref() {
            let _ = tx.send(ev);
        }
    }

    /// Delivers what is queued (for at most `limit`), then stops.
    pub fn close(&self, limit: Duration) {
        lock(&self.tx).take();
        let Some(t) = lock(&self.thread).take() else {
            return;
        };
        let deadline = Instant::now() + limit;
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn forward_all(address: &str, namespace: &str, rx: Receiver<Event>) {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    };
    let mut client: Option<EventsClient> = None;
    for ev in rx {
        let mut req = ForwardRequest::new();
        let mut env = Envelope::new();
        env.timestamp = Some(Timestamp::now()).into();
        env.namespace = namespace.to_string();
        env.topic = ev.topic.to_string();
        env.event = Some(ev.event).into();
        req.envelope = Some(env).into();
        for attempt in 1..=TRIES {
            if client.is_none() {
                client = Client::connect(&url).ok().map(EventsClient::new);
            }
            let sent = client
                .as_ref()
                .map(|c| c.forward(context::with_duration(TIMEOUT), &req));
            match sent {
                Some(Ok(_)) => break,
                other => {
                    crate::log::warn(&format!(
                        "publishing {} (try {attempt}): {:?}",
                        ev.topic,
                        other.map(|r| r.err())
                    ));
                    client = None;
                    std::thread::sleep(Duration::from_millis(100 * attempt as u64));
                }
            }
        }
    }
}
