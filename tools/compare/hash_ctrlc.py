"""How fast `shmpool hash` stops on SIGINT, and whether any process of its group is left.

Usage: python3 tools/compare/hash_ctrlc.py target/release/shmpool [DIR]   (DIR: ~/.rustup)
For each algorithm, starts `shmpool hash -a ALGO DIR` in its own process group, sends SIGINT after
1.5 s to the whole group (as a terminal does) or to the parent alone, and prints the exit status,
the time from the signal to the exit, and how many processes of the group remain.
"""
import os, signal, subprocess, sys, time
R = sys.argv[1]
DIR = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser("~/.rustup")
for algo in ["sha512", "sha256", "blake3"]:
    for target in ["group", "parent"]:
        p = subprocess.Popen([R, "hash", "-a", algo, DIR], stdout=subprocess.DEVNULL, process_group=0)
        time.sleep(1.5)
        t = time.monotonic()
        if target == "group":
            os.killpg(p.pid, signal.SIGINT)
        else:
            os.kill(p.pid, signal.SIGINT)
        rc = p.wait()
        dt = time.monotonic() - t
        left = [d for d in os.listdir("/proc") if d.isdigit() and os.path.exists(f"/proc/{d}/stat") and open(f"/proc/{d}/stat").read().rsplit(")",1)[1].split()[2] == str(p.pid)]
        print(f"{algo} SIGINT to {target}: exit {rc} after {dt*1000:.0f} ms; processes left in its group: {len(left)}")
