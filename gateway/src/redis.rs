//! A small Redis client ([RESP2](https://redis.io/docs/latest/develop/reference/protocol-spec/)
//! over TCP) for the little state replicas share: used SAML assertion ids today, rate limits
//! later. It sends one command at a time per connection from a small pool, bounds every wait
//! by a timeout and every reply by size, and never panics on what the server sends.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufStream};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

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

/// Where Redis is and how to log in, from `redis://[:password@]host:port[/db]`.
#[derive(Clone)]
pub struct RedisClient {
    address: String,
    password: Option<String>,
    database: u32,
    timeout: Duration,
    idle: std::sync::Arc<Mutex<Vec<BufStream<TcpStream>>>>,
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
    /// Parses `redis://[:password@]host:port[/db]`. Nothing is connected until first use.
    pub fn from_url(url: &str, timeout: Duration) -> Result<RedisClient, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or("must start with redis:// (TLS to Redis is not supported yet)")?;
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((credentials, rest)) => (Some(credentials), rest),
            None => (None, rest),
        };
        let password = credentials
            .map(|c| c.split_once(':').map_or(c, |(_, password)| password))
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
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
        let address = if address.contains(':') {
            address.to_owned()
        } else {
            format!("{address}:6379")
        };
        Ok(RedisClient {
            address,
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

    async fn connect(&self) -> Result<BufStream<TcpStream>, RedisError> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| RedisError::Timeout)?
            .map_err(RedisError::Connect)?;
        stream.set_nodelay(true)?;
        let mut connection = BufStream::new(stream);
        let setup = async {
            if let Some(password) = &self.password {
                exchange(&mut connection, &[b"AUTH", password.as_bytes()]).await?;
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

async fn exchange(
    connection: &mut BufStream<TcpStream>,
    args: &[&[u8]],
) -> Result<Reply, RedisError> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    connection.write_all(&request).await?;
    connection.flush().await?;
    read_reply(connection, 0).await
}

async fn read_reply(
    connection: &mut BufStream<TcpStream>,
    depth: usize,
) -> Result<Reply, RedisError> {
    if depth > 4 {
        return Err(RedisError::Protocol);
    }
    let line = read_line(connection).await?;
    let (kind, rest) = line.split_at_checked(1).ok_or(RedisError::Protocol)?;
    let number = || rest.parse::<i64>().map_err(|_| RedisError::Protocol);
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Err(RedisError::Server(rest.to_owned())),
        ":" => Ok(Reply::Integer(number()?)),
        "$" => match number()? {
            -1 => Ok(Reply::Bulk(None)),
            length => {
                let length = usize::try_from(length).map_err(|_| RedisError::Protocol)?;
                if length > MAX_BULK {
                    return Err(RedisError::Protocol);
                }
                let mut data = vec![0; length + 2];
                connection.read_exact(&mut data).await?;
                if data.split_off(length) != b"\r\n" {
                    return Err(RedisError::Protocol);
                }
                Ok(Reply::Bulk(Some(data)))
            }
        },
        "*" => match number()? {
            -1 => Ok(Reply::Array(None)),
            count => {
                let count = usize::try_from(count).map_err(|_| RedisError::Protocol)?;
                if count > 1024 {
                    return Err(RedisError::Protocol);
                }
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(Box::pin(read_reply(connection, depth + 1)).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
        },
        _ => Err(RedisError::Protocol),
    }
}

async fn read_line(connection: &mut BufStream<TcpStream>) -> Result<String, RedisError> {
    let mut line = Vec::new();
    let read = (&mut *connection)
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RedisError::Protocol);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| RedisError::Protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed() {
        let client = RedisClient::from_url("redis://:secret@cache:6380/2", Duration::ZERO).unwrap();
        assert_eq!(client.address, "cache:6380");
        assert_eq!(client.password.as_deref(), Some("secret"));
        assert_eq!(client.database, 2);
        let client = RedisClient::from_url("redis://cache", Duration::ZERO).unwrap();
        assert_eq!(
            (client.address.as_str(), client.database),
            ("cache:6379", 0)
        );
        assert!(RedisClient::from_url("rediss://cache", Duration::ZERO).is_err());
        assert!(RedisClient::from_url("redis://cache/x", Duration::ZERO).is_err());
    }
}
