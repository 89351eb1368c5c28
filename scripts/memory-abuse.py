#!/usr/bin/env python3
# RSS of `hexzd serve` (default configuration) under the abuse of issue 12, for before/after
# comparisons of two binaries (README "Limits"):
#   scripts/memory-abuse.py BINARY ARCHIVE stalled   # 300 HTTP GET /disk unread + 24 NBD x 4 x 32 MiB unread
#   scripts/memory-abuse.py BINARY ARCHIVE idle      # 20 NBD connections idle after 16 x 2 MiB bursts
# ARCHIVE: a 64 MiB stream (e.g. target/tmp/http-archives/memory-67108864-5.hxz, left by
# `cargo test --test memory_limits`). Loopback only; every loop is bounded; the daemon is killed
# at the end.
import socket, struct, subprocess, sys, time, os, re
BIN=sys.argv[1]; ARCH=os.path.abspath(sys.argv[2]); MODE=sys.argv[3]
def start():
    import tempfile
    cfg=os.path.join(tempfile.mkdtemp(),'hexzd.toml')
    open(cfg,'w').write(f'[http]\nlisten=["127.0.0.1:0"]\n[nbd]\nlisten=["127.0.0.1:0"]\n[[snapshot]]\nname="m"\npath="{ARCH}"\n')
    p=subprocess.Popen([BIN,'serve','--config',cfg],stderr=subprocess.PIPE,stdout=subprocess.DEVNULL,env=dict(os.environ,HEXZD_LOG='warn'))
    http=nbd=None
    while http is None or nbd is None:
        l=p.stderr.readline().decode()
        if not l: sys.exit(f'hexzd exited before it was ready (exit {p.wait()})')
        m=re.search(r'HTTP listening on (\S+)',l)
        if m: http=m.group(1)
        m=re.search(r'NBD listening on (\S+)',l)
        if m: nbd=m.group(1)
    h,hp=http.rsplit(':',1); n,np_=nbd.rsplit(':',1)
    return p,(h,int(hp)),(n,int(np_))
def status(p,f):
    for l in open(f'/proc/{p.pid}/status'):
        if l.startswith(f+':'): return int(l.split()[1])
def get_all(addr,path):
    s=socket.create_connection(addr); s.sendall(f'GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'.encode())
    n=0
    while True:
        b=s.recv(1<<20)
        if not b: break
        n+=len(b)
    return n
def nbd(addr):
    s=socket.create_connection(addr); s.recv(18,socket.MSG_WAITALL)
    s.sendall(struct.pack(">I",3)); s.sendall(struct.pack(">QII",0x49484156454F5054,1,0)); s.recv(10,socket.MSG_WAITALL)
    return s
def read(s,i,off,ln): s.sendall(struct.pack(">IHHQQI",0x25609513,0,0,i,off,ln))
def recvn(s,n):
    got=0
    while got<n:
        b=s.recv(min(n-got,1<<20))
        if not b: raise Exception('eof')
        got+=len(b)
p,H,N=start()
try:
    if MODE=='stalled':
        get_all(H,'/disk'); time.sleep(0.5)
        base=status(p,'VmRSS'); keep=[]
        for _ in range(300):
            s=socket.create_connection(H); s.sendall(b'GET /disk HTTP/1.1\r\nHost: t\r\n\r\n'); keep.append(s)
        for _ in range(24):
            s=nbd(N)
            for i in range(4): read(s,i,(i%2)*(32<<20),32<<20)
            keep.append(s)
        time.sleep(8)
        r=status(p,'VmRSS'); print(f'{MODE}: RSS {base/1024:.0f} -> {r/1024:.0f} MiB, +{(r-base)/324:.0f} KiB per stalled connection, peak {status(p,"VmHWM")/1024:.0f} MiB, threads {status(p,"Threads")}')
    else:
        w=nbd(N)
        for i in range(16): read(w,i,i*(2<<20),2<<20)
        for i in range(16): recvn(w,16+(2<<20))
        w.close(); time.sleep(0.5)
        base=status(p,'VmRSS'); cs=[nbd(N) for _ in range(20)]; time.sleep(0.3)
        before=status(p,'VmRSS')
        for c in cs:
            for i in range(16): read(c,i,i*(2<<20),2<<20)
            for i in range(16): recvn(c,16+(2<<20))
        after=status(p,'VmRSS'); time.sleep(4)
        idle=status(p,'VmRSS')
        print(f'{MODE}: per connection over the idle baseline: {(before-base)/20:.0f} KiB before the burst, {(after-base)/20/1024:.1f} MiB right after, {(idle-base)/20/1024:.2f} MiB after 4 s idle; threads {status(p,"Threads")}')
finally:
    p.kill()
