"""x86_64 Linux syscall numbers the supervisor may trap or reason about.

Only x86_64 is supported: the seccomp filter checks the audit arch and treats anything
else as foreign (see seccomp.py). Numbers are from the kernel's syscall_64.tbl.
"""

from __future__ import annotations

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

NR: dict[str, int] = {
    "read": 0,
    "write": 1,
    "open": 2,
    "close": 3,
    "stat": 4,
    "fstat": 5,
    "lstat": 6,
    "lseek": 8,
    "mmap": 9,
    "pread64": 17,
    "pwrite64": 18,
    "access": 21,
    "dup": 32,
    "dup2": 33,
    "sendfile": 40,
    "socket": 41,
    "connect": 42,
    "accept": 43,
    "sendto": 44,
    "recvfrom": 45,
    "sendmsg": 46,
    "recvmsg": 47,
    "shutdown": 48,
    "bind": 49,
    "listen": 50,
    "getsockname": 51,
    "getpeername": 52,
    "socketpair": 53,
    "setsockopt": 54,
    "getsockopt": 55,
    "clone": 56,
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "exit": 60,
    "wait4": 61,
    "kill": 62,
    "uname": 63,
    "fcntl": 72,
    "fsync": 74,
    "fdatasync": 75,
    "truncate": 76,
    "ftruncate": 77,
    "getdents": 78,
    "getcwd": 79,
    "chdir": 80,
    "fchdir": 81,
    "rename": 82,
    "mkdir": 83,
    "rmdir": 84,
    "creat": 85,
    "unlink": 87,
    "readlink": 89,
    "chmod": 90,
    "fchmod": 91,
    "sethostname": 170,
    "setdomainname": 171,
    "gettid": 186,
    "getxattr": 191,
    "lgetxattr": 192,
    "listxattr": 194,
    "llistxattr": 195,
    "getdents64": 217,
    "exit_group": 231,
    "openat": 257,
    "mkdirat": 258,
    "newfstatat": 262,
    "unlinkat": 263,
    "renameat": 264,
    "readlinkat": 267,
    "fchmodat": 268,
    "faccessat": 269,
    "accept4": 288,
    "dup3": 292,
    "recvmmsg": 299,
    "sendmmsg": 307,
    "renameat2": 316,
    "execveat": 322,
    "statx": 332,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "clone3": 435,
    "close_range": 436,
    "openat2": 437,
    "faccessat2": 439,
}

NAME: dict[int, str] = {nr: name for name, nr in NR.items()}

# clone(2) flag bits the supervisor cares about.
CLONE_VM = 0x00000100
CLONE_VFORK = 0x00004000
CLONE_THREAD = 0x00010000
CLONE_UNTRACED = 0x00800000
