/* Process lifecycle probe: exec, fork, exit and cgroup creation/removal, into one BPF ring buffer.
 *
 * No kernel struct is read through the compile-time headers, which may belong to another kernel: every
 * OFF_* macro is a byte offset taken from the running kernel's BTF by sensor/probe/kernel_offsets.py and passed in
 * with -D. Reads go through bpf_probe_read_kernel so a wrong pointer yields zeros, never a fault.
 */
#include "sensor.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif

#define SIGNAL_GROUP_EXIT 0x00000004

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(exec_scratch, struct exec_record, 1);
BPF_PERCPU_ARRAY(cgroup_scratch, struct cgroup_record, 1);
BPF_PERCPU_ARRAY(loss_counters, u64, LOSS_COUNTERS);

static __always_inline void count_loss(u32 index)
{
    u64 *counter = loss_counters.lookup(&index);
    if (counter)
        (*counter)++;
}

#ifndef WAKEUP_EVERY
#define WAKEUP_EVERY 256 /* records per CPU between consumer wake-ups; a power of two */
#endif
#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2

BPF_PERCPU_ARRAY(wakeup_counter, u32, 1);

/* Waking the consumer for every record costs the exec path a context switch at storm rates; the consumer
 * polls with a short timeout instead (sensor/app.py POLL_MS), so a lone record waits at most that long. */
static __always_inline u64 wakeup_flags(void)
{
    u32 zero = 0;
    u32 *counter = wakeup_counter.lookup(&zero);
    if (!counter)
        return 0;
    *counter += 1;
    return (*counter & (WAKEUP_EVERY - 1)) ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP;
}

static __always_inline u64 read_u64(const void *base, u32 offset)
{
    u64 value = 0;
    if (base)
        bpf_probe_read_kernel(&value, sizeof(value), (const char *)base + offset);
    return value;
}

static __always_inline u32 read_u32(const void *base, u32 offset)
{
    u32 value = 0;
    if (base)
        bpf_probe_read_kernel(&value, sizeof(value), (const char *)base + offset);
    return value;
}

static __always_inline u16 read_u16(const void *base, u32 offset)
{
    u16 value = 0;
    if (base)
        bpf_probe_read_kernel(&value, sizeof(value), (const char *)base + offset);
    return value;
}

static __always_inline void *read_ptr(const void *base, u32 offset)
{
    return (void *)read_u64(base, offset);
}

/* The start time of the current task's process: its thread group leader's, which the process's entity id is
 * made from (a call from another thread of the process must name the same process). */
static __always_inline u64 process_start(const void *task)
{
    return read_u64(read_ptr(task, OFF_TASK_GROUP_LEADER), OFF_TASK_START_BOOTTIME);
}

/* The number of a struct pid as seen from the initial pid namespace. */
static __always_inline u32 global_pid_nr(const void *pid)
{
    return read_u32(pid, OFF_PID_NUMBERS + OFF_UPID_NR);
}

static __always_inline u32 ns_inum(const void *nsproxy, u32 member_offset, u32 inum_offset)
{
    return read_u32(read_ptr(nsproxy, member_offset), inum_offset);
}

static __always_inline void fill_namespaces(struct exec_record *e, const void *task)
{
    void *nsproxy = read_ptr(task, OFF_TASK_NSPROXY);
    e->ns[NS_MNT] = ns_inum(nsproxy, OFF_NSPROXY_MNT_NS, OFF_MNT_NS_INUM);
    e->ns[NS_NET] = ns_inum(nsproxy, OFF_NSPROXY_NET_NS, OFF_NET_NS_INUM);
    e->ns[NS_UTS] = ns_inum(nsproxy, OFF_NSPROXY_UTS_NS, OFF_UTS_NS_INUM);
    e->ns[NS_IPC] = ns_inum(nsproxy, OFF_NSPROXY_IPC_NS, OFF_IPC_NS_INUM);
    e->ns[NS_CGROUP] = ns_inum(nsproxy, OFF_NSPROXY_CGROUP_NS, OFF_CGROUP_NS_INUM);

    /* The task's own pid namespace is the one at its struct pid's deepest level, not pid_ns_for_children. */
    void *pid = read_ptr(task, OFF_TASK_THREAD_PID);
    u32 level = read_u32(pid, OFF_PID_LEVEL) & 0x1f;
    void *pid_ns = read_ptr(pid, OFF_PID_NUMBERS + level * SIZEOF_UPID + OFF_UPID_NS);
    e->ns[NS_PID] = read_u32(pid_ns, OFF_PID_NS_INUM);

    void *cred = read_ptr(task, OFF_TASK_CRED);
    e->ns[NS_USER] = read_u32(read_ptr(cred, OFF_CRED_USER_NS), OFF_USER_NS_INUM);
    e->euid = read_u32(cred, OFF_CRED_EUID);
    e->egid = read_u32(cred, OFF_CRED_EGID);
    e->cap_effective = read_u64(cred, OFF_CRED_CAP_EFFECTIVE);
    e->cap_permitted = read_u64(cred, OFF_CRED_CAP_PERMITTED);
}

static __always_inline void fill_session(struct exec_record *e, const void *task)
{
    void *signal = read_ptr(task, OFF_TASK_SIGNAL);
    e->sid = global_pid_nr(read_ptr(signal, OFF_SIGNAL_PIDS + 8 * PIDTYPE_SID_INDEX));
    e->pgid = global_pid_nr(read_ptr(signal, OFF_SIGNAL_PIDS + 8 * PIDTYPE_PGID_INDEX));
    void *tty = read_ptr(signal, OFF_SIGNAL_TTY);
    if (tty) {
        void *driver = read_ptr(tty, OFF_TTY_DRIVER);
        e->tty_major = read_u32(driver, OFF_TTY_DRIVER_MAJOR);
        e->tty_minor = read_u32(driver, OFF_TTY_DRIVER_MINOR_START) + read_u32(tty, OFF_TTY_INDEX);
    } else {
        e->tty_major = 0;
        e->tty_minor = 0;
    }
}

struct cwd_names {
    u64 name[CWD_DEPTH];
};
BPF_PERCPU_ARRAY(cwd_scratch, struct cwd_names, 1);

/* Steps from the root of a mount to the dentry it is mounted on, while the walk sits on a mount root. */
static __always_inline void cross_mounts(void **dentry, void **vfsmnt)
{
#pragma unroll
    for (int k = 0; k < 4; k++) {
        if (*dentry != read_ptr(*vfsmnt, OFF_VFSMOUNT_MNT_ROOT))
            return;
        void *mnt = (char *)*vfsmnt - OFF_MOUNT_MNT;
        void *parent_mnt = read_ptr(mnt, OFF_MOUNT_MNT_PARENT);
        if (!parent_mnt || parent_mnt == mnt)
            return; /* the top of the mount tree */
        *dentry = read_ptr(mnt, OFF_MOUNT_MNT_MOUNTPOINT);
        *vfsmnt = (char *)parent_mnt + OFF_MOUNT_MNT;
    }
}

/* A path as the task itself sees it (relative to its own root, so a container's path is the path inside the
 * container), as components from leaf to root written at e->data[base...]; user space reverses them. Returns
 * the bytes written. A path that does not reach the task's root (a file outside it: runc's re-exec of the host's
 * binary from inside a container's mount namespace) ends at the top of the mount tree, which reads as the path
 * the host sees.
 *
 * Two loops keep the verifier's work linear: the first only follows pointers (its branches differ in
 * unknown values, so their states merge), the second only copies names. */
/* FNV-1a over the HEAD_BYTES the kernel read of the executed file, a 64-bit word at a time (little-endian, as
 * sensor/rules/identity.py computes it from a file): 64 bytes of stack per step */
static __always_inline u64 head_hash(const char *head)
{
    u64 hash = 0xcbf29ce484222325ULL;
#pragma unroll
    for (int part = 0; part < HEAD_BYTES / 64; part++) {
        u64 words[8] = {};
        bpf_probe_read_kernel(words, sizeof(words), head + part * 64);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            hash ^= words[i];
            hash *= 0x100000001b3ULL;
        }
    }
    return hash;
}

static __always_inline u32 fill_path(struct exec_record *e, u32 base, void *dentry, void *vfsmnt,
                                     void *root_dentry, void *root_mnt, u32 truncated_flag)
{
    u32 zero = 0;
    struct cwd_names *names = cwd_scratch.lookup(&zero);
    if (!names || !dentry || !vfsmnt)
        return 0;

    u32 count = CWD_DEPTH;
    for (u32 i = 0; i < CWD_DEPTH; i++) {
        if (dentry == root_dentry && vfsmnt == root_mnt) {
            count = i;
            break;
        }
        cross_mounts(&dentry, &vfsmnt);
        if (dentry == root_dentry && vfsmnt == root_mnt) {
            count = i;
            break;
        }
        void *parent = read_ptr(dentry, OFF_DENTRY_D_PARENT);
        if (!parent || parent == dentry) {
            count = i;
            break;
        }
        names->name[i & (CWD_DEPTH - 1)] = read_u64(dentry, OFF_DENTRY_D_NAME + OFF_QSTR_NAME);
        dentry = parent;
    }
    if (count >= CWD_DEPTH)
        e->flags |= truncated_flag;

    char *out = &e->data[base & (CWD_MAX - 1)];
    u32 off = 0;
    for (u32 j = 0; j < CWD_DEPTH; j++) {
        if (j >= count)
            break;
        /* >=, not >: from CWD_MAX - CWD_NAME_MAX a full-length name ends at CWD_MAX, which the caller's mask
         * turns into 0, and the working directory of a process in /<255 chars>/<255>/<255>/<255> read as "/" */
        if (off >= CWD_MAX - CWD_NAME_MAX) {
            e->flags |= truncated_flag;
            break;
        }
        long n = bpf_probe_read_kernel_str(&out[off & (CWD_MAX - 1)], CWD_NAME_MAX,
                                           (void *)names->name[j & (CWD_DEPTH - 1)]);
        if (n <= 0)
            break;
        off += n;
    }
    return off;
}

/* Fork records are deferred: most children exec at once, and their exec record carries everything the fork
 * record would (parent, start time, credentials, cgroup), so a fork record is sent only for a child that is
 * still needed without an exec of its own: when it exits, or when a descendant execs (so the descendant's
 * ancestry is complete in user space before its exec record). Sending it for every fork cost user space a
 * third of its records in exec storms. When the map is full, the record goes out at once as before. */
#ifndef PENDING_FORKS
#define PENDING_FORKS 32768
#endif
#define PENDING_DEPTH 8 /* fork-only ancestors released ahead of an exec (nested subshells) */

BPF_HASH(pending_forks, u32, struct fork_record, PENDING_FORKS);

static __always_inline void emit_fork(struct fork_record *r)
{
    if (events.ringbuf_output(r, sizeof(*r), wakeup_flags()) < 0)
        count_loss(LOSS_RINGBUF_FULL);
}

static __always_inline void release_fork(u32 tgid)
{
    struct fork_record *pending = pending_forks.lookup(&tgid);
    if (!pending)
        return;
    struct fork_record r = *pending;
    pending_forks.delete(&tgid);
    emit_fork(&r);
}

/* Sends the deferred fork records of the task's fork-only ancestors, the oldest first, so user space learns
 * each parent before its child. The walk stops at the first ancestor already known to user space. */
static __always_inline void release_ancestors(const void *task)
{
    u32 chain[PENDING_DEPTH] = {};
    u32 count = 0;
    void *ancestor = read_ptr(task, OFF_TASK_REAL_PARENT);
#pragma unroll
    for (int i = 0; i < PENDING_DEPTH; i++) {
        u32 tgid = read_u32(ancestor, OFF_TASK_TGID);
        if (!tgid || !pending_forks.lookup(&tgid))
            break;
        chain[i] = tgid;
        count = i + 1;
        ancestor = read_ptr(ancestor, OFF_TASK_REAL_PARENT);
    }
#pragma unroll
    for (int i = PENDING_DEPTH - 1; i >= 0; i--) {
        if (i < count)
            release_fork(chain[i]);
    }
}

#define PENDING_CHILDREN 128 /* fork-only children released ahead of their parent's exec or exit */

static __always_inline int has_children(const void *task)
{
    const char *head = (const char *)task + OFF_TASK_CHILDREN;
    void *first = read_ptr(head, 0);
    return first && first != (void *)head;
}

/* A deferred fork record stands for a copy of its parent as the parent was at the fork: user space takes the
 * child's executable, arguments and ids from the parent's entry. Before the parent execs (a new image) or exits
 * (its entry ages out), its fork-only children go out, so they still copy what they were forked from. */
static __always_inline void release_children(const void *task)
{
    const char *head = (const char *)task + OFF_TASK_CHILDREN;
    void *node = read_ptr(head, 0);
    for (int i = 0; i < PENDING_CHILDREN; i++) {
        if (!node || node == (void *)head)
            return;
        u32 tgid = read_u32((char *)node - OFF_TASK_SIBLING, OFF_TASK_TGID);
        if (tgid)
            release_fork(tgid);
        node = read_ptr(node, 0);
    }
}

/* raw tracepoint sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm):
 * fires once the new image is in place, so mm->arg_start..arg_end holds the final argv (interpreter
 * included for scripts) in the new process's memory, and bprm gives the true argc. */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    void *task = (void *)ctx->args[0];
    void *bprm = (void *)ctx->args[2];
    u32 zero = 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    release_ancestors(task);
    if (has_children(task)) {
        /* children forked from the old image go out first, after the entry they copy */
        release_fork(tgid);
        release_children(task);
    } else {
        /* this exec record supersedes the process's own deferred fork record */
        pending_forks.delete(&tgid);
    }
    struct exec_record *e = exec_scratch.lookup(&zero);
    if (!e)
        return 0;

    u64 uid_gid = bpf_get_current_uid_gid();
    e->hdr.type = RECORD_EXEC;
    e->hdr.ktime_ns = bpf_ktime_get_boot_ns();
    e->pid = pid_tgid >> 32;
    e->tid = (u32)pid_tgid;
    e->old_tid = (u32)ctx->args[1];
    e->ppid = read_u32(read_ptr(task, OFF_TASK_REAL_PARENT), OFF_TASK_TGID);
    e->uid = (u32)uid_gid;
    e->gid = uid_gid >> 32;
    e->cgroup_id = bpf_get_current_cgroup_id();
    e->start_boottime_ns = read_u64(task, OFF_TASK_START_BOOTTIME);
    e->flags = 0;
    fill_namespaces(e, task);
    fill_session(e, task);
    bpf_get_current_comm(&e->comm, sizeof(e->comm));

    void *file = read_ptr(bprm, OFF_BPRM_FILE);
    void *inode = read_ptr(file, OFF_FILE_F_INODE);
    e->exe_ino = read_u64(inode, OFF_INODE_I_INO);
    e->exe_dev = read_u32(read_ptr(inode, OFF_INODE_I_SB), OFF_SB_S_DEV);
    /* the top bits of i_ctime_nsec carry flags on kernels with multigrain timestamps; nanoseconds need 30 */
    e->exe_ctime_ns = read_u64(inode, OFF_INODE_CTIME_SEC) * 1000000000ULL +
                      (read_u32(inode, OFF_INODE_CTIME_NSEC) & 0x3fffffff);
    e->argc = read_u32(bprm, OFF_BPRM_ARGC);
    e->exe_size = read_u64(inode, OFF_INODE_I_SIZE);
    e->exe_head_hash = head_hash((const char *)bprm + OFF_BPRM_BUF);

    void *fs = read_ptr(task, OFF_TASK_FS);
    void *root_dentry = read_ptr(fs, OFF_FS_ROOT + OFF_PATH_DENTRY);
    void *root_mnt = read_ptr(fs, OFF_FS_ROOT + OFF_PATH_MNT);
    u32 cwd_len = fill_path(e, 0, read_ptr(fs, OFF_FS_PWD + OFF_PATH_DENTRY), read_ptr(fs, OFF_FS_PWD + OFF_PATH_MNT),
                            root_dentry, root_mnt, EXEC_CWD_TRUNCATED) & (CWD_MAX - 1);
    e->cwd_len = cwd_len;
    /* the file actually executed, walked from the new image's file (a link such as /bin/sh -> dash, or runc's
     * re-exec through /proc/self/exe, reads as the file itself), as Elastic Defend reports process.executable */
    u32 exe_len = fill_path(e, cwd_len, read_ptr(file, OFF_FILE_F_PATH + OFF_PATH_DENTRY),
                            read_ptr(file, OFF_FILE_F_PATH + OFF_PATH_MNT), root_dentry, root_mnt,
                            EXEC_EXE_TRUNCATED) & (CWD_MAX - 1);
    e->exe_len = exe_len;
    char *rest = &e->data[cwd_len + exe_len];

    u32 filename_len = 0;
    const char *filename = read_ptr(bprm, OFF_BPRM_FILENAME);
    long copied = bpf_probe_read_kernel_str(rest, FILENAME_MAX_LEN, filename);
    if (copied > 0) {
        filename_len = copied - 1;
        /* A full buffer is either a path of exactly FILENAME_MAX_LEN - 1 bytes or a cut one: the kernel's own
         * byte at the buffer's last position tells which (NUL only when the path ended there). */
        if (copied >= FILENAME_MAX_LEN) {
            char next = 0;
            bpf_probe_read_kernel(&next, 1, filename + FILENAME_MAX_LEN - 1);
            if (next) {
                e->flags |= EXEC_FILENAME_TRUNCATED;
                count_loss(LOSS_PATH_TRUNCATED);
            }
        }
    }
    filename_len &= FILENAME_MAX_LEN - 1;

    void *mm = read_ptr(task, OFF_TASK_MM);
    u64 arg_start = read_u64(mm, OFF_MM_ARG_START);
    u64 arg_end = read_u64(mm, OFF_MM_ARG_END);
    u64 args_len = arg_end > arg_start ? arg_end - arg_start : 0;
    if (args_len >= ARGS_MAX) {
        args_len = ARGS_MAX - 1;
        e->flags |= EXEC_ARGS_TRUNCATED;
        count_loss(LOSS_ARGS_TRUNCATED);
    }
    args_len &= ARGS_MAX - 1;
    if (args_len && bpf_probe_read_user(&rest[filename_len], args_len, (void *)arg_start) < 0) {
        args_len = 0;
        e->flags |= EXEC_ARGS_READ_FAILED;
        count_loss(LOSS_ARGS_READ_FAILED);
    }
    e->filename_len = filename_len;
    e->args_len_lo = args_len & 0xffff;
    e->args_len_hi = args_len >> 16;

    u64 env_len = 0;
#if ENV_MAX > 0
    /* the environment follows argv in the new image's memory; user space keeps only the configured variables */
    u64 env_start = read_u64(mm, OFF_MM_ENV_START);
    u64 env_end = read_u64(mm, OFF_MM_ENV_END);
    env_len = env_end > env_start ? env_end - env_start : 0;
    if (env_len >= ENV_MAX) {
        env_len = ENV_MAX - 1;
        e->flags |= EXEC_ENV_TRUNCATED;
    }
    env_len &= ENV_MAX - 1;
    if (env_len && bpf_probe_read_user(&rest[filename_len + args_len], env_len, (void *)env_start) < 0) {
        env_len = 0;
        e->flags |= EXEC_ENV_TRUNCATED;
    }
#endif
    e->env_len = env_len;

    u32 size = sizeof(*e) - sizeof(e->data) + cwd_len + exe_len + filename_len + (u32)args_len + (u32)env_len;
    e->hdr.size = size;
    if (events.ringbuf_output(e, size, wakeup_flags()) < 0)
        count_loss(LOSS_RINGBUF_FULL);
    return 0;
}

/* raw tracepoint sched_process_fork(struct task_struct *parent, struct task_struct *child) */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    void *parent = (void *)ctx->args[0];
    void *child = (void *)ctx->args[1];
    u32 child_pid = read_u32(child, OFF_TASK_PID);
    u32 child_tgid = read_u32(child, OFF_TASK_TGID);
    if (child_pid != child_tgid)
        return 0; /* a new thread, not a new process */

    struct fork_record r = {};
    u64 uid_gid = bpf_get_current_uid_gid();
    r.hdr.type = RECORD_FORK;
    r.hdr.size = sizeof(r);
    r.hdr.ktime_ns = bpf_ktime_get_boot_ns();
    r.parent_pid = read_u32(parent, OFF_TASK_TGID);
    r.pid = child_tgid;
    r.start_boottime_ns = read_u64(child, OFF_TASK_START_BOOTTIME);
    r.uid = (u32)uid_gid;
    r.gid = uid_gid >> 32;
    r.cgroup_id = bpf_get_current_cgroup_id();
#ifdef FORK_EVENTS
    /* every fork is a document (events.fork, for Session View): nothing is deferred, so nothing is pending */
    emit_fork(&r);
    return 0;
#endif
    if (pending_forks.insert(&child_tgid, &r) == 0)
        return 0;
    /* no room to defer (or a stale entry for a reused pid): send it now, after its fork-only ancestors */
    pending_forks.delete(&child_tgid);
    release_ancestors(child);
    emit_fork(&r);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    if (!args->group_dead)
        return 0; /* other threads of the process live on */
    void *task = (void *)bpf_get_current_task();
    void *signal = read_ptr(task, OFF_TASK_SIGNAL);
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (pending_forks.lookup(&tgid)) {
        /* a process that never exec'd: user space learns of it now, its ancestors first */
        release_ancestors(task);
        release_fork(tgid);
    }
    if (has_children(task))
        release_children(task);

    struct exit_record r = {};
    r.hdr.type = RECORD_EXIT;
    r.hdr.size = sizeof(r);
    r.hdr.ktime_ns = bpf_ktime_get_boot_ns();
    r.pid = bpf_get_current_pid_tgid() >> 32;
    if (read_u32(signal, OFF_SIGNAL_FLAGS) & SIGNAL_GROUP_EXIT)
        r.exit_code = read_u32(signal, OFF_SIGNAL_GROUP_EXIT_CODE);
    else
        r.exit_code = read_u32(task, OFF_TASK_EXIT_CODE);
    r.start_boottime_ns = read_u64(task, OFF_TASK_START_BOOTTIME);
    void *pid = read_ptr(task, OFF_TASK_THREAD_PID);
    u32 level = read_u32(pid, OFF_PID_LEVEL) & 0x1f;
    const char *upid = (const char *)pid + OFF_PID_NUMBERS + level * SIZEOF_UPID;
    r.ns_pid = read_u32((void *)upid, OFF_UPID_NR);
    r.pid_ns = read_u32(read_ptr((void *)upid, OFF_UPID_NS), OFF_PID_NS_INUM);
    if (events.ringbuf_output(&r, sizeof(r), wakeup_flags()) < 0)
        count_loss(LOSS_RINGBUF_FULL);
    return 0;
}

#ifdef CRED_EVENTS
/* Credential and session changes: the syscalls' exit tracepoints, on success only. Compiled in only when the
 * kernel has syscall tracepoints (sensor/probe/bcc_loader.py) and the configuration asks for them. */
struct cred_state {
    u32 uid, gid, euid, egid, sid;
};
/* What was last sent for each process: a set*id or setsid call that changes nothing (setuid(getuid()) in a loop,
 * from inside a container) sends nothing, so such a loop cannot fill the ring and blind the sensor to execs. */
BPF_TABLE("lru_hash", u32, struct cred_state, cred_sent, 8192);

static __always_inline int emit_cred(u32 change)
{
    void *task = (void *)bpf_get_current_task();
    void *cred = read_ptr(task, OFF_TASK_CRED);
    void *signal = read_ptr(task, OFF_TASK_SIGNAL);
    u64 uid_gid = bpf_get_current_uid_gid();
    struct cred_record r = {};
    r.hdr.type = RECORD_CRED;
    r.hdr.size = sizeof(r);
    r.hdr.ktime_ns = bpf_ktime_get_boot_ns();
    r.pid = bpf_get_current_pid_tgid() >> 32;
    r.change = change;
    r.uid = (u32)uid_gid;
    r.gid = uid_gid >> 32;
    r.euid = read_u32(cred, OFF_CRED_EUID);
    r.egid = read_u32(cred, OFF_CRED_EGID);
    r.sid = global_pid_nr(read_ptr(signal, OFF_SIGNAL_PIDS + 8 * PIDTYPE_SID_INDEX));
    r.start_boottime_ns = process_start(task);
    struct cred_state now = {r.uid, r.gid, r.euid, r.egid, r.sid};
    struct cred_state *sent = cred_sent.lookup(&r.pid);
    if (sent && sent->uid == now.uid && sent->gid == now.gid && sent->euid == now.euid && sent->egid == now.egid &&
        sent->sid == now.sid)
        return 0;
    cred_sent.update(&r.pid, &now);
    if (events.ringbuf_output(&r, sizeof(r), wakeup_flags()) < 0)
        count_loss(LOSS_RINGBUF_FULL);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_setuid) { return args->ret == 0 ? emit_cred(CRED_UID) : 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_setreuid) { return args->ret == 0 ? emit_cred(CRED_UID) : 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_setresuid) { return args->ret == 0 ? emit_cred(CRED_UID) : 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_setgid) { return args->ret == 0 ? emit_cred(CRED_GID) : 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_setregid) { return args->ret == 0 ? emit_cred(CRED_GID) : 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_setresgid) { return args->ret == 0 ? emit_cred(CRED_GID) : 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_setsid) { return args->ret > 0 ? emit_cred(CRED_SID) : 0; }
#endif

#ifdef NET_EVENTS
/* TCP connections, as Elastic Defend reports them: connection_attempted when a process's connect(2) sends a
 * SYN, connection_accepted when accept(2) hands a process an established connection. Compiled in when the
 * configuration asks for them (events.network) and the kernel has the sock:inet_sock_set_state tracepoint. */
#define NET_AF_INET 2
#define NET_AF_INET6 10
#define NET_IPPROTO_TCP 6
#define NET_TCP_SYN_SENT 2
#define NET_TCP_CLOSE 7

/* A forked process that never exec'd (a server's worker, a subshell) is known to user space only from its fork
 * record, which waits in pending_forks: it goes out now, its fork-only ancestors first, ahead of the network
 * record that names the process. */
static __always_inline void release_process(const void *task, u32 tgid)
{
    if (pending_forks.lookup(&tgid)) {
        release_ancestors(task);
        release_fork(tgid);
    }
}

static __always_inline void emit_net(struct net_record *r)
{
    r->hdr.type = RECORD_NET;
    r->hdr.size = sizeof(*r);
    r->hdr.ktime_ns = bpf_ktime_get_boot_ns();
    if (events.ringbuf_output(r, sizeof(*r), wakeup_flags()) < 0)
        count_loss(LOSS_RINGBUF_FULL);
}

/* The process that moved a socket to SYN_SENT, until the socket leaves it. connect(2) moves it in the caller's
 * context, before the kernel picks the source port; the socket leaves SYN_SENT (established, refused, timed out
 * or closed) with the port set, mostly in softirq context where the current task is not the caller. So the
 * record goes out on leaving, from what was kept on entering. An LRU: sockets that never leave (a flood of
 * connects to a black hole) push out the oldest; a socket whose entry was pushed out is still reported, without
 * its process (pid 0), which user space counts (connections_unattributed_total). */
#ifndef NET_PENDING
#define NET_PENDING 16384
#endif
struct net_owner {
    u32 pid;
    u32 pad;
    u64 start_boottime_ns;
};
BPF_TABLE("lru_hash", u64, struct net_owner, connecting, NET_PENDING);

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != NET_IPPROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == NET_TCP_SYN_SENT) {
        if (args->oldstate != NET_TCP_CLOSE)
            return 0;
        void *task = (void *)bpf_get_current_task();
        struct net_owner owner = {};
        owner.pid = bpf_get_current_pid_tgid() >> 32;
        owner.start_boottime_ns = process_start(task);
        release_process(task, owner.pid);
        connecting.update(&sk, &owner);
        return 0;
    }
    if (args->oldstate != NET_TCP_SYN_SENT)
        return 0;
    struct net_record r = {};
    struct net_owner *owner = connecting.lookup(&sk);
    if (owner) {
        r.pid = owner->pid;
        r.start_boottime_ns = owner->start_boottime_ns;
        connecting.delete(&sk);
    }
    r.action = NET_ATTEMPTED;
    r.family = args->family;
    r.local_port = args->sport;
    r.remote_port = args->dport;
    if (args->family == NET_AF_INET6) {
        bpf_probe_read_kernel(r.local_addr, 16, args->saddr_v6);
        bpf_probe_read_kernel(r.remote_addr, 16, args->daddr_v6);
    } else {
        bpf_probe_read_kernel(r.local_addr, 4, args->saddr);
        bpf_probe_read_kernel(r.remote_addr, 4, args->daddr);
    }
    emit_net(&r);
    return 0;
}

#ifdef NET_ACCEPT_EVENTS
/* accept(2) and accept4(2) on success return the connection's descriptor: its socket is found through the
 * caller's descriptor table (task->files->fdt->fd[fd]->private_data->sk) and its addresses read from the socket.
 * Nothing is kept between calls, so no table can be filled to hide a connection. */
static __always_inline int emit_accepted(long fd)
{
    if (fd < 0)
        return 0;
    void *task = (void *)bpf_get_current_task();
    void *fdt = read_ptr(read_ptr(task, OFF_TASK_FILES), OFF_FILES_FDT);
    if (!fdt || (u64)fd >= read_u32(fdt, OFF_FDTABLE_MAX_FDS))
        return 0;
    void *file = read_ptr(read_ptr(fdt, OFF_FDTABLE_FD), (u32)fd * 8);
    void *sk = read_ptr(read_ptr(file, OFF_FILE_PRIVATE_DATA), OFF_SOCKET_SK);
    if (!sk || read_u16(sk, OFF_SOCK_PROTOCOL) != NET_IPPROTO_TCP)
        return 0;
    u16 family = read_u16(sk, OFF_SOCK_FAMILY);
    if (family != NET_AF_INET && family != NET_AF_INET6)
        return 0;
    struct net_record r = {};
    r.pid = bpf_get_current_pid_tgid() >> 32;
    r.start_boottime_ns = process_start(task);
    release_process(task, r.pid);
    r.action = NET_ACCEPTED;
    r.family = family;
    r.local_port = read_u16(sk, OFF_SOCK_NUM);                    /* host order */
    r.remote_port = __builtin_bswap16(read_u16(sk, OFF_SOCK_DPORT)); /* network order; the hosts are little-endian */
    if (family == NET_AF_INET6) {
        bpf_probe_read_kernel(r.local_addr, 16, (char *)sk + OFF_SOCK_V6_RCV_SADDR);
        bpf_probe_read_kernel(r.remote_addr, 16, (char *)sk + OFF_SOCK_V6_DADDR);
    } else {
        bpf_probe_read_kernel(r.local_addr, 4, (char *)sk + OFF_SOCK_RCV_SADDR);
        bpf_probe_read_kernel(r.remote_addr, 4, (char *)sk + OFF_SOCK_DADDR);
    }
    emit_net(&r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return emit_accepted(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return emit_accepted(args->ret); }
#endif
#endif

#ifdef MODULE_EVENTS
/* Module loads (Elastic Defend's load_module): compiled in where the kernel has module:module_load, which a
 * kernel without loadable modules lacks (sensor/probe/bcc_loader.py then leaves this out). */
TRACEPOINT_PROBE(module, module_load)
{
    void *task = (void *)bpf_get_current_task();
    struct module_record r = {};
    r.hdr.type = RECORD_MODULE;
    r.hdr.size = sizeof(r);
    r.hdr.ktime_ns = bpf_ktime_get_boot_ns();
    r.pid = bpf_get_current_pid_tgid() >> 32;
    r.taints = args->taints;
    r.start_boottime_ns = process_start(task);
    bpf_probe_read_kernel_str(r.name, sizeof(r.name), (const char *)args + (args->data_loc_name & 0xffff));
    if (events.ringbuf_output(&r, sizeof(r), wakeup_flags()) < 0)
        count_loss(LOSS_RINGBUF_FULL);
    return 0;
}
#endif

static __always_inline int emit_cgroup(u32 type, s32 root, s32 level, u64 id, const void *path)
{
    u32 zero = 0;
    struct cgroup_record *r = cgroup_scratch.lookup(&zero);
    if (!r)
        return 0;
    r->hdr.type = type;
    r->hdr.ktime_ns = bpf_ktime_get_boot_ns();
    r->root = root;
    r->level = level;
    r->id = id;
    long copied = bpf_probe_read_kernel_str(r->path, sizeof(r->path), path);
    u32 path_len = copied > 0 ? copied - 1 : 0;
    path_len &= CGROUP_PATH_MAX - 1;
    r->path_len = path_len;
    u32 size = sizeof(*r) - sizeof(r->path) + path_len;
    r->hdr.size = size;
    if (events.ringbuf_output(r, size, wakeup_flags()) < 0)
        count_loss(LOSS_RINGBUF_FULL);
    return 0;
}

TRACEPOINT_PROBE(cgroup, cgroup_mkdir)
{
    return emit_cgroup(RECORD_CGROUP_MKDIR, args->root, args->level, args->id,
                       (const char *)args + (args->data_loc_path & 0xffff));
}

TRACEPOINT_PROBE(cgroup, cgroup_rmdir)
{
    return emit_cgroup(RECORD_CGROUP_RMDIR, args->root, args->level, args->id,
                       (const char *)args + (args->data_loc_path & 0xffff));
}
