//! A small Redis client ([RESP2](https://redis.io/docs/latest/develop/reference/protocol-spec/)
//! over TCP, or TLS for `rediss://`) for the little state replicas share: used SAML assertion
//! ids, rate limits, the mass-lookup counts. It sends one command at a time per connection from
//! a small pool, bounds every wait by a timeout and every reply by size, and never panics on
//! what the server sends. `[redis]` ([`RedisSettings`]) says which CA the server's certificate
//! must chain to and holds the credentials, so that no password needs to be in a URL.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _, BufStream};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::config::{ConfigError, RedisConfig};

/// A connection to Redis, plain or TLS.
trait Connection: AsyncBufRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncBufRead + AsyncWrite + Unpin + Send> Connection for T {}

/// `[redis]` made ready: the TLS client configuration for `rediss://` URLs and the credentials.
#[derive(Clone, Default)]
pub struct RedisSettings {
    tls: Option<Arc<rustls::ClientConfig>>,
    username: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("tls", &self.tls.is_some())
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Reads the CA, client certificate and password file now; errors name the field.
    pub fn from_config(config: Option<&RedisConfig>) -> Result<RedisSettings, ConfigError> {
        let default = RedisConfig::default();
        let config = config.unwrap_or(&default);
        let identity = crate::https::ClientIdentity::from_pair(
            config.client_cert.as_ref(),
            config.client_key.as_ref(),
            "redis.client_cert",
        )?;
        let tls = crate::https::client_tls(config.ca_file.as_deref(), identity).map_err(|e| {
            let field = if e.contains("CA") || config.client_cert.is_none() {
                "redis.ca_file"
            } else {
                "redis.client_cert"
            };
            ConfigError::new(field, e)
        })?;
        let password = match &config.password_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("redis.password_file", format!("{}: {e}", path.display()))
                })?;
                let password = text.trim_end_matches(['\r', '\n']).to_owned();
                if password.is_empty() {
                    return Err(ConfigError::new(
                        "redis.password_file",
                        format!("{}: is empty", path.display()),
                    ));
                }
                Some(password)
            }
        };
        Ok(RedisSettings {
            tls: Some(Arc::new(tls)),
            username: config.username.clone().filter(|u| !u.is_empty()),
            password,
        })
    }
}

/// The largest bulk reply accepted.
const MAX_BULK: usize = 1024 * 1024;
/// The most idle connections kept.
const POOL: usize = 8;

/// Why a command failed. Callers treat every variant as "Redis unavailable".
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("connecting to Redis failed: {0}")]
    Connect(std::io::Error),
    #[error("talking to Redis failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("Redis did not answer in time")]
    Timeout,
    #[error("Redis answered with an error: {0}")]
    Server(String),
    #[error("Redis answered something this client does not understand")]
    Protocol,
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `:1`
    Integer(i64),
    /// `$3 abc`, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*2 ...`, or `*-1` (nil).
    Array(Option<Vec<Reply>>),
}

/// Where Redis is and how to log in, from `redis[s]://[user[:password]@]host:port[/db]` and
/// `[redis]`.
#[derive(Clone)]
pub struct RedisClient {
    address: String,
    /// The server name its certificate must carry, for `rediss://`.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    username: Option<String>,
    password: Option<String>,
    database: u32,
    timeout: Duration,
    idle: Arc<Mutex<Vec<Box<dyn Connection>>>>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("address", &self.address)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl RedisClient {
    /// Parses `redis[s]://[user[:password]@]host:port[/db]`; `[redis]`'s user and password
    /// take the place of the URL's. Nothing is connected until first use.
    pub fn from_url(
        url: &str,
        timeout: Duration,
        settings: &RedisSettings,
    ) -> Result<RedisClient, String> {
        let (secure, rest) = match (url.strip_prefix("rediss://"), url.strip_prefix("redis://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => return Err("must start with redis:// or rediss:// (TLS)".into()),
        };
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((credentials, rest)) => (Some(credentials), rest),
            None => (None, rest),
        };
        let (url_user, url_password) = match credentials {
            None => (None, None),
            Some(credentials) => match credentials.split_once(':') {
                Some((user, password)) => (Some(user), Some(password)),
                None => (Some(credentials), None),
            },
        };
        let username = settings
            .username
            .clone()
            .or_else(|| url_user.filter(|u| !u.is_empty()).map(str::to_owned));
        let password = settings
            .password
            .clone()
            .or_else(|| url_password.filter(|p| !p.is_empty()).map(str::to_owned));
        let (address, database) = match rest.split_once('/') {
            Some((address, "")) => (address, 0),
            Some((address, db)) => (
                address,
                db.parse()
                    .map_err(|_| format!("database {db:?} is not a number"))?,
            ),
            None => (rest, 0),
        };
        if address.is_empty() {
            return Err("needs host:port".into());
        }
        let address = if address
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        {
            address.to_owned()
        } else {
            format!("{address}:6379")
        };
        let tls = if secure {
            let config = settings
                .tls
                .clone()
                .ok_or("rediss:// needs the [redis] TLS settings")?;
            let host = address
                .rsplit_once(':')
                .map_or(address.as_str(), |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|_| format!("{host:?} is not a host name or address"))?;
            Some((config, name))
        } else {
            None
        };
        Ok(RedisClient {
            address,
            tls,
            username,
            password,
            database,
            timeout,
            idle: Default::default(),
        })
    }

    /// Sends one command and reads its reply. An error reply is [`RedisError::Server`].
    pub async fn command(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let pooled = self.idle.lock().await.pop();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let reply = tokio::time::timeout(self.timeout, exchange(&mut connection, args))
            .await
            .map_err(|_| RedisError::Timeout)?;
        match reply {
            // A server error leaves the connection usable; I/O and protocol errors do not.
            Ok(_) | Err(RedisError::Server(_)) => {
                let mut idle = self.idle.lock().await;
                if idle.len() < POOL {
                    idle.push(connection);
                }
            }
            Err(_) => {}
        }
        reply
    }

    async fn connect(&self) -> Result<Box<dyn Connection>, RedisError> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| RedisError::Timeout)?
            .map_err(RedisError::Connect)?;
        stream.set_nodelay(true)?;
        let mut connection: Box<dyn Connection> = match &self.tls {
            None => Box::new(BufStream::new(stream)),
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                let stream =
                    tokio::time::timeout(self.timeout, connector.connect(name.clone(), stream))
                        .await
                        .map_err(|_| RedisError::Timeout)?
                        .map_err(RedisError::Connect)?;
                Box::new(BufStream::new(stream))
            }
        };
        let setup = async {
            match (&self.username, &self.password) {
                (Some(user), Some(password)) => {
                    exchange(
                        &mut connection,
                        &[b"AUTH", user.as_bytes(), password.as_bytes()],
                    )
                    .await?;
                }
                (None, Some(password)) => {
                    exchange(&mut connection, &[b"AUTH", password.as_bytes()]).await?;
                }
                // A user without a password: nothing to log in with.
                (_, None) => {}
            }
            if self.database != 0 {
                let database = self.database.to_string();
                exchange(&mut connection, &[b"SELECT", database.as_bytes()]).await?;
            }
            Ok::<_, RedisError>(())
        };
        tokio::time::timeout(self.timeout, setup)
            .await
            .map_err(|_| RedisError::Timeout)??;
        Ok(connection)
    }
}

/// A connection subscribed to one channel (RESP2 `SUBSCRIBE`): what is published there, in
/// order. Reading is safe to cancel (a heartbeat's timeout): bytes read are kept until a whole
/// reply is there.
pub struct Subscription {
    connection: Box<dyn Connection>,
    pending: Vec<u8>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// What a subscribed connection delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// A message published to the channel: its payload.
    Message(Vec<u8>),
    /// The answer to [`Subscription::ping`].
    Pong,
}

impl RedisClient {
    /// Subscribes a connection of its own to `channel`.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, RedisError> {
        let connection = self.connect().await?;
        let mut subscription = Subscription {
            connection,
            pending: Vec::new(),
        };
        // Its confirmation is read as what follows it is: a message published at once may come
        // in the same read, and stays for `next`.
        let confirmed = tokio::time::timeout(self.timeout, async {
            subscription
                .write(&[b"SUBSCRIBE", channel.as_bytes()])
                .await?;
            subscription.frame().await
        })
        .await
        .map_err(|_| RedisError::Timeout)??;
        match confirmed {
            Reply::Array(Some(items)) if matches!(items.first(), Some(Reply::Bulk(Some(kind))) if kind == b"subscribe") => {
                Ok(subscription)
            }
            _ => Err(RedisError::Protocol),
        }
    }
}

impl Subscription {
    /// The next message or pong; waits as long as it takes. A closed connection, or anything
    /// a subscribed connection should not say (an unsubscribe, an error), ends it.
    pub async fn next(&mut self) -> Result<Pushed, RedisError> {
        let Reply::Array(Some(items)) = self.frame().await? else {
            return Err(RedisError::Protocol);
        };
        match items.as_slice() {
            [Reply::Bulk(Some(kind)), _, Reply::Bulk(Some(payload))] if kind == b"message" => {
                Ok(Pushed::Message(payload.clone()))
            }
            [Reply::Bulk(Some(kind)), ..] if kind == b"pong" => Ok(Pushed::Pong),
            _ => Err(RedisError::Protocol),
        }
    }

    /// Asks for a pong (allowed while subscribed), to find out the connection still stands.
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        self.write(&[b"PING"]).await
    }

    async fn write(&mut self, args: &[&[u8]]) -> Result<(), RedisError> {
        self.connection.write_all(&encode(args)).await?;
        self.connection.flush().await?;
        Ok(())
    }

    /// The next whole reply (safe to cancel: bytes read stay in `pending`).
    async fn frame(&mut self) -> Result<Reply, RedisError> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.pending, 0)? {
                self.pending.drain(..used);
                return Ok(reply);
            }
            read_more(&mut self.connection, &mut self.pending).await?;
        }
    }
}

/// A command in RESP: an array of bulk strings.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    request
}

/// One whole reply at the start of `bytes` and how many bytes it took; `None` while it is not
/// all there.
fn parse_reply(bytes: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, RedisError> {
    if depth > 4 {
        return Err(RedisError::Protocol);
    }
    let Some(end) = bytes.windows(2).position(|pair| pair == b"\r\n") else {
        return if bytes.len() > 64 * 1024 {
            Err(RedisError::Protocol)
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| RedisError::Protocol)?;
    let (kind, rest) = line.split_at_checked(1).ok_or(RedisError::Protocol)?;
    let number = || rest.parse::<i64>().map_err(|_| RedisError::Protocol);
    let after = end + 2;
    match kind {
        "+" => Ok(Some((Reply::Simple(rest.to_owned()), after))),
        // An error as the reply: the connection stays usable. One inside an array leaves the
        // rest of the array unread: the connection is not.
        "-" if depth == 0 => Err(RedisError::Server(rest.to_owned())),
        "-" => Err(RedisError::Protocol),
        ":" => Ok(Some((Reply::Integer(number()?), after))),
        "$" => match number()? {
            -1 => Ok(Some((Reply::Bulk(None), after))),
            length => {
                let length = usize::try_from(length).map_err(|_| RedisError::Protocol)?;
                if length > MAX_BULK {
                    return Err(RedisError::Protocol);
                }
                if bytes.len() < after + length + 2 {
                    return Ok(None);
                }
                if &bytes[after + length..after + length + 2] != b"\r\n" {
                    return Err(RedisError::Protocol);
                }
                let data = bytes[after..after + length].to_vec();
                Ok(Some((Reply::Bulk(Some(data)), after + length + 2)))
            }
        },
        "*" => match number()? {
            -1 => Ok(Some((Reply::Array(None), after))),
            count => {
                let count = usize::try_from(count).map_err(|_| RedisError::Protocol)?;
                if count > 1024 {
                    return Err(RedisError::Protocol);
                }
                let mut items = Vec::with_capacity(count);
                let mut at = after;
                for _ in 0..count {
                    match parse_reply(&bytes[at..], depth + 1)? {
                        Some((item, used)) => {
                            items.push(item);
                            at += used;
                        }
                        None => return Ok(None),
                    }
                }
                Ok(Some((Reply::Array(Some(items)), at)))
            }
        },
        _ => Err(RedisError::Protocol),
    }
}

async fn exchange(
    connection: &mut Box<dyn Connection>,
    args: &[&[u8]],
) -> Result<Reply, RedisError> {
    connection.write_all(&encode(args)).await?;
    connection.flush().await?;
    read_reply(connection).await
}

/// Reads one reply. Nothing is pipelined on a connection outside a subscription, so a reply
/// is all the server sends: anything after it is a protocol error.
async fn read_reply(connection: &mut Box<dyn Connection>) -> Result<Reply, RedisError> {
    let mut pending = Vec::new();
    loop {
        if let Some((reply, used)) = parse_reply(&pending, 0)? {
            return if used == pending.len() {
                Ok(reply)
            } else {
                Err(RedisError::Protocol)
            };
        }
        read_more(connection, &mut pending).await?;
    }
}

/// Adds what the server sent next to `pending`. Safe to cancel: the bytes move only once read.
async fn read_more(
    connection: &mut Box<dyn Connection>,
    pending: &mut Vec<u8>,
) -> Result<(), RedisError> {
    if pending.len() > MAX_BULK + 1024 {
        return Err(RedisError::Protocol);
    }
    let read = connection.fill_buf().await?;
    if read.is_empty() {
        return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let count = read.len();
    pending.extend_from_slice(read);
    connection.consume(count);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed() {
        let plain = RedisSettings::default();
        let parse = |url: &str, settings: &RedisSettings| {
            RedisClient::from_url(url, Duration::ZERO, settings)
        };
        let client = parse("redis://:secret@cache:6380/2", &plain).unwrap();
        assert_eq!(client.address, "cache:6380");
        assert_eq!(client.password.as_deref(), Some("secret"));
        assert_eq!(client.username, None);
        assert_eq!(client.database, 2);
        assert!(client.tls.is_none());
        let client = parse("redis://cache", &plain).unwrap();
        assert_eq!(
            (client.address.as_str(), client.database),
            ("cache:6379", 0)
        );
        assert!(parse("redis://cache/x", &plain).is_err());
        assert!(parse("http://cache", &plain).is_err());
        // TLS needs its settings; with them the server name is the URL's host.
        assert!(parse("rediss://cache", &plain).is_err());
        let settings = RedisSettings {
            username: Some("portvagt".into()),
            password: Some("from-a-file".into()),
            ..RedisSettings::from_config(None).unwrap()
        };
        let client = parse("rediss://someone:inline@cache.internal:6380/1", &settings).unwrap();
        assert_eq!(client.address, "cache.internal:6380");
        assert_eq!(client.username.as_deref(), Some("portvagt"));
        assert_eq!(client.password.as_deref(), Some("from-a-file"));
        let (_, name) = client.tls.unwrap();
        assert_eq!(name.to_str(), "cache.internal");
        let client = parse(
            "rediss://reader@[::1]:6380",
            &RedisSettings::from_config(None).unwrap(),
        )
        .unwrap();
        assert_eq!(client.username.as_deref(), Some("reader"));
        assert_eq!(client.tls.unwrap().1.to_str(), "::1");
    }

    #[test]
    fn replies_are_read_whole_or_not_at_all() {
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$8\r\npat-anne\r\n";
        let whole = parse_reply(message, 0).unwrap().unwrap();
        assert_eq!(whole.1, message.len());
        assert_eq!(
            whole.0,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"message".to_vec())),
                Reply::Bulk(Some(b"ch".to_vec())),
                Reply::Bulk(Some(b"pat-anne".to_vec())),
            ]))
        );
        // Cut anywhere: not yet a reply (the bytes wait for the rest).
        for cut in 0..message.len() {
            assert_eq!(parse_reply(&message[..cut], 0).unwrap(), None, "{cut}");
        }
        // Two in a row: the first, and where the second begins.
        let two = [&b":1\r\n"[..], b"+OK\r\n"].concat();
        assert_eq!(parse_reply(&two, 0).unwrap(), Some((Reply::Integer(1), 4)));
        assert!(matches!(
            parse_reply(b"-ERR no\r\n", 0),
            Err(RedisError::Server(_))
        ));
        // An error inside an array is no usable reply (the rest of it is still to come).
        assert!(matches!(
            parse_reply(b"*2\r\n-ERR no\r\n", 0),
            Err(RedisError::Protocol)
        ));
        for bad in [&b"?x\r\n"[..], b"$3\r\nabcd\r\n", b"*2000\r\n", b"$-2\r\n"] {
            assert!(parse_reply(bad, 0).is_err(), "{bad:?}");
        }
        let deep = "*1\r\n".repeat(6) + ":1\r\n";
        assert!(parse_reply(deep.as_bytes(), 0).is_err());
    }
}
