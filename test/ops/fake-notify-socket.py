# A stand-in for systemd's notification socket, for tests: binds the unix datagram socket given
# as argv[1], prints every message as one JSON line, and releases systemd-notify's barrier by
# closing the file descriptors it passes (that is all systemd does with them).
import json, os, socket, sys

path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
print(json.dumps({"bound": path}), flush=True)
while True:
    data, anc, _flags, _addr = s.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for i in range(0, len(payload) - len(payload) % 4, 4):
                os.close(int.from_bytes(payload[i:i + 4], sys.byteorder))
    if data != b"BARRIER=1":
        print(json.dumps({"message": data.decode()}), flush=True)
