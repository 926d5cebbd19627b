//! TLS to a provider: rustls over the transport below it (our TCP transport, or a proxy's
//! tunnel), in place of ureq's own TLS layer, for what a worker holds while it waits.
//!
//! * The plaintext buffers are [`UpstreamBuffers`], lent from the process-wide pool only while
//!   bytes are in them: a worker waiting for an answer holds neither (ureq's TLS layer keeps a
//!   zero-filled pair, 18 KiB, for the connection's life). The encrypted side is the TCP
//!   transport's, lent the same way; rustls keeps its own record buffer (4 KiB while idle).
//! * One rustls configuration per provider, shared by all its workers' connections (ureq's layer
//!   builds one per worker, each with its own copy of the root store and its own session cache),
//!   so a worker's new connection resumes a session another worker's handshake left.

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use ureq::unversioned::transport::time::{Duration, Instant};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, Transport, TransportAdapter,
};

use super::transport::UpstreamBuffers;

/// The rustls client configuration of a provider: the Mozilla roots that webpki-roots carries,
/// or only the certificates of its `ca_file` (DER), TLS 1.2 and 1.3, no client certificate.
pub fn client_config(ca_certs: Option<&[Vec<u8>]>) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca_certs {
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(certs) => {
            let mut roots = RootCertStore::empty();
            for der in certs {
                roots
                    .add(rustls::pki_types::CertificateDer::from(der.clone()))
                    .map_err(|e| format!("unusable CA certificate: {e}"))?;
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Wraps the connection the chain made so far in TLS when the URL asks for it.
pub struct LeanTlsConnector {
    config: Arc<ClientConfig>,
}

impl LeanTlsConnector {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        LeanTlsConnector { config }
    }
}

impl std::fmt::Debug for LeanTlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanTlsConnector").finish()
    }
}

/// The host of `uri` as a TLS server name (an IPv6 literal without its brackets).
fn server_name(details: &ConnectionDetails) -> Result<ServerName<'static>, ureq::Error> {
    let host = details
        .uri
        .authority()
        .map(|a| a.host())
        .ok_or(ureq::Error::Tls("no host to verify the certificate of"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|_| ureq::Error::Tls("invalid TLS server name"))
}

/// The connect timeout as it is left now: counted from when the connection began, so that the
/// TCP connect and the handshake together keep within it.
fn connect_time_left(details: &ConnectionDetails) -> NextTimeout {
    let mut timeout = details.timeout;
    if let (Duration::Exact(limit), Instant::Exact(began)) = (timeout.after, details.now) {
        timeout.after = Duration::Exact(limit.saturating_sub(began.elapsed()));
    }
    timeout
}

/// The TLS transport travels boxed, and the handshake is a function of its own: the connector
/// chain moves the transport from frame to frame, and a plain-HTTP connection passes through
/// this connector too. Inline and by value, rustls's connection state sized those frames, and a
/// worker's first connection took its stack a page deeper than any later call does.
impl<In: Transport> Connector<In> for LeanTlsConnector {
    type Out = Either<In, Box<LeanTlsTransport>>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        self.handshake(details, transport.boxed())
            .map(|tls| Some(Either::B(tls)))
    }
}

impl LeanTlsConnector {
    #[inline(never)]
    fn handshake(
        &self,
        details: &ConnectionDetails,
        transport: Box<dyn Transport>,
    ) -> Result<Box<LeanTlsTransport>, ureq::Error> {
        let conn = ClientConnection::new(Arc::clone(&self.config), server_name(details)?)?;
        let sock = TransportAdapter::new(transport, details.current_time.clone());
        let buffers = UpstreamBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        let mut tls = Box::new(LeanTlsTransport {
            buffers,
            conn,
            sock,
            awaiting_answer: false,
        });
        tls.sock.set_timeout(connect_time_left(details));
        let LeanTlsTransport { conn, sock, .. } = &mut *tls;
        conn.complete_io(sock)?;
        Ok(tls)
    }
}

pub struct LeanTlsTransport {
    /// The plaintext side.
    buffers: UpstreamBuffers,
    conn: ClientConnection,
    sock: TransportAdapter,
    /// A request was written and nothing read since (see `transport::LeanTcpTransport`).
    awaiting_answer: bool,
}

impl std::fmt::Debug for LeanTlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanTlsTransport").finish()
    }
}

impl Transport for LeanTlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.awaiting_answer = true;
        self.sock.set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        rustls::Stream::new(&mut self.conn, &mut self.sock).write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        // The request is out: its plaintext buffer serves another worker's while this one waits.
        self.buffers.release_output();
        self.sock.set_timeout(timeout);
        if self.awaiting_answer && self.buffers.input_is_empty() {
            self.buffers.release_input();
        }
        // Wait for plaintext (or the end) inside rustls, then lend a buffer to copy it into.
        let available = rustls::Stream::new(&mut self.conn, &mut self.sock)
            .fill_buf()?
            .len();
        if available == 0 {
            return Ok(false);
        }
        let input = self.buffers.input_append_buf();
        let amount = io::Read::read(&mut self.conn.reader(), input)?;
        self.buffers.input_appended(amount);
        self.awaiting_answer = false;
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // As the connection goes back to the pool or before its next use: nothing unconsumed is
        // kept for a next request.
        self.buffers.release_input();
        self.sock.get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}
