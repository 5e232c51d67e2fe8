//! Listening sockets: one per worker, all in one SO_REUSEPORT group, each told its core
//! with SO_INCOMING_CPU, and a classic-BPF program on the group that picks the socket of
//! the worker pinned to the CPU that received the packet. This is the one place that
//! speaks raw socket options.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog asked of the kernel; the effective value is capped by net.core.somaxconn.
pub const BACKLOG: i32 = 4096;

/// Bind the reuseport group: socket `i` belongs to the worker on `cores[i]`. Sockets are
/// made here, in order, because the kernel numbers group members by the order they
/// join, and the steering program returns those numbers. Port 0 is allowed: the first
/// socket picks the port and the others join it.
pub fn bind(
    addr: SocketAddr,
    cores: &[usize],
    steer_by_cpu: bool,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(cores.len());
    for (i, core) in cores.iter().enumerate() {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        if steer_by_cpu {
            s.set_cpu_affinity(*core)?;
        }
        s.bind(&addr.into())?;
        s.listen(BACKLOG)?;
        if i == 0 {
            if let Some(a) = s.local_addr()?.as_socket() {
                addr = a;
            }
            if steer_by_cpu {
                attach_cpu_steering(&s, cores)?;
            }
        }
        out.push(s.into());
    }
    Ok(out)
}

/// The steering program: `A = cpu; if A == cores[i] return i; ...; return A % n`.
fn steering_program(cores: &[usize]) -> Vec<libc::sock_filter> {
    const BPF_LD: u16 = 0x00;
    const BPF_W: u16 = 0x00;
    const BPF_ABS: u16 = 0x20;
    const BPF_JMP: u16 = 0x05;
    const BPF_JEQ: u16 = 0x10;
    const BPF_K: u16 = 0x00;
    const BPF_RET: u16 = 0x06;
    const BPF_A: u16 = 0x10;
    const BPF_ALU: u16 = 0x04;
    const BPF_MOD: u16 = 0x90;
    const SKF_AD_OFF: i32 = -0x1000;
    const SKF_AD_CPU: i32 = 36;
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut p = vec![ins(
        BPF_LD | BPF_W | BPF_ABS,
        0,
        0,
        (SKF_AD_OFF + SKF_AD_CPU) as u32,
    )];
    for (i, core) in cores.iter().enumerate() {
        // If equal fall through to the return just after; else skip it.
        p.push(ins(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, *core as u32));
        p.push(ins(BPF_RET | BPF_K, 0, 0, i as u32));
    }
    p.push(ins(
        BPF_ALU | BPF_MOD | BPF_K,
        0,
        0,
        cores.len().max(1) as u32,
    ));
    p.push(ins(BPF_RET | BPF_A, 0, 0, 0));
    p
}

fn attach_cpu_steering(s: &Socket, cores: &[usize]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let prog = steering_program(cores);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, a live Vec of `prog.len()` sock_filter entries,
    // for the duration of the call; the kernel copies the program before returning. The
    // option length is exactly the size of the sock_fprog passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_maps_cores_to_indices() {
        let p = steering_program(&[2, 5]);
        // ld cpu; jeq 2; ret 0; jeq 5; ret 1; mod 2; ret a
        assert_eq!(p.len(), 7);
        assert_eq!(p[1].k, 2);
        assert_eq!(p[2].k, 0);
        assert_eq!(p[3].k, 5);
        assert_eq!(p[4].k, 1);
        assert_eq!(p[5].k, 2);
    }

    #[test]
    fn group_shares_one_port_and_accepts_the_program() {
        let ls = bind("127.0.0.1:0".parse().unwrap(), &[0, 1], true).unwrap();
        let a = ls[0].local_addr().unwrap();
        let b = ls[1].local_addr().unwrap();
        assert_eq!(a, b);
        assert_ne!(a.port(), 0);
    }
}
