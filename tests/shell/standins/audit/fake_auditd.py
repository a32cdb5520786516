"""A stand-in auditd: runs the 3.x syslog plugin (a child whose argv[0] is the plugin path) while
the plugin config says active = yes, re-reading it on SIGHUP like auditd 3.0.9 does."""
import os
import signal
import subprocess
import sys
import time

root = sys.argv[1]
children: list[subprocess.Popen[bytes]] = []


def load(*_):
    conf = os.path.join(root, "etc/audit/plugins.d/syslog.conf")
    try:
        with open(conf) as handle:
            text = handle.read()
    except OSError:
        return
    if "active = yes" in text and not children:
        children.append(subprocess.Popen(["/sbin/audisp-syslog", "600"], executable="/bin/sleep"))


def stop(*_):
    for child in children:
        child.kill()
    sys.exit(0)


signal.signal(signal.SIGHUP, load)
signal.signal(signal.SIGTERM, stop)
load()
deadline = time.time() + 120
while time.time() < deadline:
    time.sleep(0.2)
stop()
