/* Record layouts shared by the BPF program and sensor/probe/layout.py. Every member's offset and size is checked
 * against that mirror: sensor/probe/layout.py static_asserts() is compiled after this header into the BPF
 * program at load, and by gcc in tests/unit/test_probe_layout.py.
 *
 * Every record starts with struct record_header; `type` says which layout follows and `size` how many bytes of
 * the record are valid (exec records are variable-length: only the argv and filename bytes read are sent).
 */
#ifndef CONTAINER_SENSOR_H
#define CONTAINER_SENSOR_H

#ifndef ARGS_MAX
#define ARGS_MAX 16384 /* bytes of argv kept per exec; must be a power of two */
#endif
#ifndef FILENAME_MAX_LEN
/* bytes of the executable path kept, NUL included; must be a power of two. PATH_MAX: every path execve(2) takes
 * fits whole. Only execveat(2) with a directory fd makes a longer one ("/dev/fd/N/" + a relative path), and
 * that one is cut and flagged. The record is variable-length, so a short path costs no more than before. */
#define FILENAME_MAX_LEN 4096
#endif
#ifndef ENV_MAX
/* bytes of the environment kept per exec, for the variables process.env_vars names (user space keeps only those):
 * a power of two, or 0 for none (the configuration names no variable) */
#define ENV_MAX 0
#endif
#define CGROUP_PATH_MAX 512 /* must be a power of two */
#define HEAD_BYTES 256 /* BINPRM_BUF_SIZE: the bytes of the executed file the kernel reads into linux_binprm.buf */
#define CWD_MAX 1024 /* bytes of working-directory components kept; must be a power of two */
#define CWD_NAME_MAX 256 /* one path component, NUL included */
#define CWD_DEPTH 32 /* path components walked; must be a power of two */
#define COMM_LEN 16

enum record_type {
    RECORD_EXEC = 1,
    RECORD_FORK = 2,
    RECORD_EXIT = 3,
    RECORD_CGROUP_MKDIR = 4,
    RECORD_CGROUP_RMDIR = 5,
    RECORD_CRED = 6,
    RECORD_NET = 7,
    RECORD_MODULE = 8,
};

/* What a net_record reports (Elastic Defend's event.action) */
enum net_action {
    NET_ATTEMPTED = 1, /* connection_attempted: a SYN sent by connect(2) */
    NET_ACCEPTED = 2,  /* connection_accepted: accept(2) returned the connection */
};

/* What a cred_record reports: which set*id(2)/setsid(2) call succeeded */
enum cred_change {
    CRED_UID = 1, /* setuid, setreuid, setresuid */
    CRED_GID = 2, /* setgid, setregid, setresgid */
    CRED_SID = 3, /* setsid */
};

/* Bits of exec_record.flags */
enum exec_flags {
    EXEC_ARGS_TRUNCATED = 1,     /* argv did not fit in ARGS_MAX */
    EXEC_ARGS_READ_FAILED = 2,   /* argv could not be read at all */
    EXEC_FILENAME_TRUNCATED = 4, /* path did not fit in FILENAME_MAX_LEN: what was kept is a cut prefix */
    EXEC_CWD_TRUNCATED = 8,      /* the working directory was deeper or longer than CWD_DEPTH/CWD_MAX */
    EXEC_ENV_TRUNCATED = 16,     /* the environment did not fit in ENV_MAX, or could not be read */
    EXEC_EXE_TRUNCATED = 32,     /* the executed file's path was deeper or longer than CWD_DEPTH/CWD_MAX */
};

/* Indexes into the loss counters map */
enum loss_counter {
    LOSS_RINGBUF_FULL = 0,
    LOSS_ARGS_TRUNCATED = 1,
    LOSS_ARGS_READ_FAILED = 2,
    LOSS_PATH_TRUNCATED = 3,
    LOSS_COUNTERS = 4,
};

struct record_header {
    u32 type;
    u32 size;
    u64 ktime_ns; /* CLOCK_BOOTTIME */
};

enum ns_index { NS_PID, NS_MNT, NS_NET, NS_UTS, NS_IPC, NS_CGROUP, NS_USER, NS_COUNT };

struct exec_record {
    struct record_header hdr;
    u32 pid;
    u32 tid;
    u32 old_tid;
    u32 ppid;
    u32 uid;
    u32 gid;
    u32 euid;
    u32 egid;
    u32 sid;
    u32 pgid;
    u32 tty_major;
    u32 tty_minor;
    u64 cgroup_id;
    u64 start_boottime_ns;
    u64 exe_ino;
    u32 exe_dev;
    u32 flags;
    u64 exe_ctime_ns; /* the executed file's inode change time: with dev and ino, its identity over time */
    u64 cap_effective; /* capability sets after the exec (bit N: capability N) */
    u64 cap_permitted;
    /* the executed file's size and a hash of its first BINPRM_BUF_SIZE bytes, which the kernel has just read to
     * load it: an ELF header and program headers name one build of one binary, so a copy of ssh is known by them
     * even when the file is gone before anyone can read it */
    u64 exe_size;
    u64 exe_head_hash;
    u32 ns[NS_COUNT];
    u32 argc;
    u16 filename_len;
    u16 args_len_lo; /* args_len = args_len_lo | args_len_hi << 16 */
    u16 args_len_hi;
    u16 cwd_len;
    u16 env_len;
    u16 exe_len; /* the executed file's path components, leaf first, after the working directory's */
    char comm[COMM_LEN];
    /* working-directory components leaf first, each NUL-terminated; then the executed file's, the same way; then
     * the filename as passed; then argv (NUL-separated); then the environment (NUL-separated). CWD_NAME_MAX of
     * slack lets the last component read go unchecked by length. */
    char data[2 * CWD_MAX + CWD_NAME_MAX + FILENAME_MAX_LEN + ARGS_MAX + ENV_MAX];
};

struct fork_record {
    struct record_header hdr;
    u32 parent_pid;
    u32 pid;
    u64 start_boottime_ns;
    u32 uid;
    u32 gid;
    u64 cgroup_id;
};

struct exit_record {
    struct record_header hdr;
    u32 pid;
    s32 exit_code;
    u64 start_boottime_ns;
    /* the task's own pid namespace and its pid there: 1 is that namespace's init, whose end ends the namespace,
     * after which the kernel may give its inode number to a new one (user space forgets what it tied to it) */
    u32 pid_ns;
    u32 ns_pid;
};

/* The caller's credentials and session just after a successful set*id or setsid call (user space compares them
 * with what it held, and reports only a real change) */
struct cred_record {
    struct record_header hdr;
    u32 pid;
    u32 change;
    u32 uid;
    u32 gid;
    u32 euid;
    u32 egid;
    u32 sid;
    u32 pad;
    u64 start_boottime_ns;
};

/* A TCP connection of a process, IPv4 addresses in the first 4 bytes of their arrays. Ports in host order. */
struct net_record {
    struct record_header hdr;
    u32 pid; /* 0 when the connecting process is not known */
    u32 action;
    u64 start_boottime_ns; /* of the process (its thread group leader) */
    u16 family; /* AF_INET or AF_INET6 */
    u16 local_port;
    u16 remote_port;
    u16 pad;
    u8 local_addr[16];
    u8 remote_addr[16];
};

#define MODULE_NAME_MAX 64 /* the kernel's MODULE_NAME_LEN is 56 */

/* A kernel module loaded (its init done), by the process that asked for it */
struct module_record {
    struct record_header hdr;
    u32 pid;
    u32 taints; /* the module's taint bits (TAINT_* numbers) */
    u64 start_boottime_ns;
    char name[MODULE_NAME_MAX];
};

struct cgroup_record {
    struct record_header hdr;
    s32 root;
    s32 level;
    u64 id;
    u32 path_len;
    u32 pad;
    char path[CGROUP_PATH_MAX];
};

#endif
