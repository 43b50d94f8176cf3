//! The control socket: a Unix socket only root can open, one JSON request per line and one
//! JSON response per line. `lbctl` is the client; the daemon answers through a handler.
//!
//! A request that is too long, not JSON, not a known command, or from a non-root peer gets an
//! error response; nothing a client sends can stop the server.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

/// Longest request line accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Services, backends, counters, data path mode.
    Status {},
    /// Adds a backend to a service (kept in the state file).
    BackendAdd {
        /// Service name or VIP:port.
        service: String,
        /// Backend address.
        addr: String,
        /// Weight (default 1).
        weight: Option<u32>,
    },
    /// Sets a backend's weight.
    BackendWeight {
        /// Service name or VIP:port.
        service: String,
        /// Backend address.
        addr: String,
        /// New weight.
        weight: u32,
    },
    /// Drains a backend: no new flows, established ones go on.
    BackendDrain {
        /// Service name or VIP:port.
        service: String,
        /// Backend address.
        addr: String,
    },
    /// Removes a backend; refused while it has flows unless `force`.
    BackendRemove {
        /// Service name or VIP:port.
        service: String,
        /// Backend address.
        addr: String,
        /// Cut its flows.
        force: bool,
    },
    /// Puts a backend in maintenance (`on`) or back in rotation (`off`, also ends a drain).
    BackendMaintenance {
        /// Service name or VIP:port.
        service: String,
        /// Backend address.
        addr: String,
        /// On or off.
        on: bool,
    },
    /// Lists the connection table (`lbctl flows`), filtered, at most `limit` rows.
    Flows {
        /// Only this service (name or VIP:port).
        #[serde(default)]
        service: Option<String>,
        /// Only flows to this backend address.
        #[serde(default)]
        backend: Option<String>,
        /// Only this client (address or address:port).
        #[serde(default)]
        client: Option<String>,
        /// Rows at most (default [`crate::flows::DEFAULT_LIMIT`]).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Withdraws every VIP of this node from ECMP (`[announce]`); it goes on forwarding what
    /// still arrives. Kept across restarts.
    NodeDrain {},
    /// Announces the VIPs again.
    NodeUndrain {},
    /// Takes this node out of the VRRP election, make-before-break if it is master (maintenance);
    /// kept across restarts.
    VrrpResign {},
    /// Takes this node back into the VRRP election.
    VrrpResume {},
    /// `lbd --replace`: the successor asks for the listening sockets; the answer is frames
    /// ([`crate::handover`]), not a JSON line.
    Handover {},
}

pub use crate::status::Status;

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Response {
    /// Status.
    Status(Box<Status>),
    /// The connection table (`lbctl flows`).
    Flows(Box<crate::flows::FlowsReport>),
    /// A change was made and saved.
    Done {
        /// What was done, one line.
        message: String,
    },
    /// The request failed; the message says why and what to do.
    Error {
        /// One line.
        message: String,
    },
}

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon answers on the socket.
    #[error(
        "another lbd is already listening on {0}; stop it or set [daemon] control_socket to another path"
    )]
    InUse(PathBuf),
    /// Creating the socket failed.
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The daemon is not running.
    #[error(
        "lbd is not running: no control socket at {0} (start it with `systemctl start lbd`, or pass --socket / LBD_SOCKET)"
    )]
    NotRunning(PathBuf),
    /// Permission denied.
    #[error("permission denied on {0}: lbctl must run as root")]
    Denied(PathBuf),
    /// Other I/O error.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The daemon's answer was not understood.
    #[error("bad answer from lbd on {path}: {message}")]
    BadAnswer {
        /// Socket path.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// Binds the control socket: creates the directory (0755), refuses to steal a live socket,
/// removes a stale one, and makes the socket root-only (0600).
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves requests until the task is dropped. `handler` runs for each valid request.
pub async fn serve<H, F>(listener: UnixListener, handler: Arc<H>)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send,
{
    serve_with_handover(listener, handler, None).await;
}

/// [`serve`], and a `handover` request's connection goes to `handover` (the daemon answers
/// it with frames, see [`crate::handover`]).
pub async fn serve_with_handover<H, F>(
    listener: UnixListener,
    handler: Arc<H>,
    handover: Option<tokio::sync::mpsc::Sender<UnixStream>>,
) where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let handover = handover.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &*handler, handover).await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

async fn serve_one<H, F>(
    stream: UnixStream,
    handler: &H,
    handover: Option<tokio::sync::mpsc::Sender<UnixStream>>,
) -> io::Result<()>
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let peer_uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let response = match read {
        _ if peer_uid != 0 => error(format!("permission denied: uid {peer_uid} is not root")),
        Err(_) => error(format!(
            "no complete request within {}s",
            REQUEST_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => error(format!("read failed: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => {
            error(format!("request longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(Request::Handover {}) => match handover {
                Some(to) => {
                    let stream = reader
                        .into_inner()
                        .into_inner()
                        .reunite(write)
                        .map_err(io::Error::other)?;
                    if let Err(e) = to.send(stream).await {
                        // The daemon is stopping: the successor sees the connection close.
                        drop(e);
                    }
                    return Ok(());
                }
                None => error("this server takes no hand-over".into()),
            },
            Ok(req) => handler(req).await,
            Err(e) => error(format!("malformed request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_else(|e| {
        format!("{{\"result\":\"error\",\"message\":\"cannot encode the answer: {e}\"}}")
            .into_bytes()
    });
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

fn error(message: String) -> Response {
    Response::Error { message }
}

/// Sends one request and reads the answer (the `lbctl` side).
pub async fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let io_err = |source: io::Error| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning(path.to_path_buf()));
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(ControlError::Denied(path.to_path_buf()));
        }
        Err(e) => return Err(io_err(e)),
    };
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::BadAnswer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(io_err)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.map_err(io_err)?;
    serde_json::from_slice(&answer).map_err(|e| ControlError::BadAnswer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(raw: &[u8]) -> Response {
        let dir =
            std::env::temp_dir().join(format!("lbd-ctl-{}-{}", std::process::id(), raw.len()));
        let path = dir.join("s.sock");
        let listener = bind(&path).await.unwrap();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(|_req: Request| async {
                Response::Done {
                    message: "status".into(),
                }
            }),
        ));
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(raw).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
        serde_json::from_slice(&out).unwrap()
    }

    fn message(r: Response) -> String {
        match r {
            Response::Error { message } => message,
            Response::Status(_) => "status".into(),
            Response::Flows(_) => "flows".into(),
            Response::Done { message } => message,
        }
    }

    /// Bad control messages, each with its error; the server keeps serving after each.
    #[tokio::test]
    async fn bad_messages_get_errors() {
        // The server answers root only.
        if !lb_testkit::require_or_skip(
            "bad_messages_get_errors",
            lb_testkit::root_unavailable_reason(),
        ) {
            return;
        }
        let long = vec![b'x'; MAX_REQUEST + 10];
        let cases: Vec<(&[u8], &str)> = vec![
            (b"{\"cmd\":\"status\"}\n", "status"),
            (b"not json\n", "malformed request"),
            (
                b"{\"cmd\":\"reboot\"}\n",
                "malformed request: unknown variant `reboot`",
            ),
            (b"{\"cmd\":\"status\",\"x\":1}\n", "malformed request"),
            (b"\n", "malformed request"),
            (&long, "request longer than 65536 bytes"),
        ];
        for (raw, want) in cases {
            let got = message(roundtrip(raw).await);
            assert!(
                got.contains(want),
                "request {:?}: want {want:?}, got {got:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(40)])
            );
        }
    }

    #[tokio::test]
    async fn client_reports_daemon_not_running() {
        let e = request(Path::new("/nonexistent/lbd.sock"), &Request::Status {})
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("lbd is not running: no control socket at /nonexistent/lbd.sock"),
            "{e}"
        );
    }
}
