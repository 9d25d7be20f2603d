//! Can address A open a TCP connection to B's port? The observation that
//! confirms a cut link (the connect times out or is refused) and a healed
//! one (it connects). The probe's socket is bound to A's address before it
//! connects, as a node's own outgoing connections are.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Connected,
    /// Nothing answered within the probe's deadline: packets dropped.
    TimedOut,
    /// Refused or another error (nothing listens there, a reject rule).
    Failed,
}

impl Reach {
    pub fn connected(self) -> bool {
        self == Reach::Connected
    }
}

/// Connects from `from` (port chosen by the kernel) to `to`, within
/// `deadline`, and closes the connection at once.
pub async fn reach(from: Ipv4Addr, to: SocketAddrV4, deadline: Duration) -> Reach {
    match connect_from(from, to, deadline).await {
        Ok(_) => Reach::Connected,
        Err(r) => r,
    }
}

/// Connects from `from` to `to` within `deadline`: the open connection and
/// its own address (what a relay it lands in sees as its peer), or what
/// the probe saw instead.
pub async fn connect_from(
    from: Ipv4Addr,
    to: SocketAddrV4,
    deadline: Duration,
) -> Result<(TcpStream, SocketAddrV4), Reach> {
    let attempt = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(from, 0)))?;
        let stream = socket.connect(SocketAddr::V4(to)).await?;
        match stream.local_addr()? {
            SocketAddr::V4(local) => Ok((stream, local)),
            SocketAddr::V6(_) => Err(std::io::Error::other("bound to IPv4")),
        }
    };
    match tokio::time::timeout(deadline, attempt).await {
        Ok(Ok(open)) => Ok(open),
        Ok(Err(_)) => Err(Reach::Failed),
        Err(_) => Err(Reach::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_is_reached_from_another_loopback_address_and_a_closed_port_is_not() {
        let listener = tokio::net::TcpListener::bind("127.100.250.1:0")
            .await
            .unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let from = Ipv4Addr::new(127, 100, 250, 2);
        let accept = tokio::spawn(async move { listener.accept().await.map(|(_, peer)| peer) });
        assert_eq!(
            reach(from, addr, Duration::from_secs(2)).await,
            Reach::Connected
        );
        // The connection came from the address the probe was bound to.
        let peer = accept.await.unwrap().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(from));
        let closed = std::net::TcpListener::bind("127.100.250.1:0").unwrap();
        let SocketAddr::V4(gone) = closed.local_addr().unwrap() else {
            unreachable!()
        };
        drop(closed);
        assert_eq!(
            reach(from, gone, Duration::from_secs(2)).await,
            Reach::Failed
        );
    }
}
