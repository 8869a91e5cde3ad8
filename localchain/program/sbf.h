/* Minimal freestanding sBPF runtime interface for the local oracle stand-in.
 *
 * Only what oracle.c needs: fixed-width types, the serialized program input (parsed into Acct records),
 * the C-ABI structures the syscalls take, and the syscall prototypes. No mutable globals (the loader
 * rejects .data/.bss): all scratch state lives in the heap region.
 */
#ifndef GRIDMETER_SBF_H
#define GRIDMETER_SBF_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed int i32;
typedef signed long long i64;

#define HEAP_START 0x300000000ULL /* heap region, 32 KiB by default */
#define U64_MAX 0xffffffffffffffffULL
#define I64_MAX 0x7fffffffffffffffLL
#define MAX_PERMITTED_DATA_INCREASE 10240
#define MAX_SEED_LEN 32

/* C-ABI structures (solana_sdk.h layout). Every pointer handed to a syscall must be 8-byte aligned. */
typedef struct {
    const u8 *addr;
    u64 len;
} SolBytes; /* also a signer seed */

typedef struct {
    const SolBytes *addr;
    u64 len;
} SolSignerSeeds;

typedef struct {
    const u8 *pubkey;
    u8 is_writable;
    u8 is_signer;
} SolAccountMeta;

typedef struct {
    const u8 *program_id;
    const SolAccountMeta *accounts;
    u64 account_len;
    const u8 *data;
    u64 data_len;
} SolInstruction;

typedef struct {
    const u8 *key;
    u64 *lamports;
    u64 data_len;
    u8 *data;
    const u8 *owner;
    u64 rent_epoch;
    u8 is_signer;
    u8 is_writable;
    u8 executable;
} SolAccountInfo;

typedef struct {
    u64 slot;
    i64 epoch_start_timestamp;
    u64 epoch;
    u64 leader_schedule_epoch;
    i64 unix_timestamp;
} Clock;

typedef struct {
    u64 lamports_per_byte_year;
    u64 exemption_threshold_bits; /* f64 bits; 2.0 on every cluster */
    u8 burn_percent;
} Rent;

/* One serialized account of the program input, pointing into the input region (so CPI pointer checks
 * see the canonical locations). */
typedef struct {
    u8 *key;
    u8 *owner;
    u64 *lamports;
    u64 *data_len;
    u8 *data;
    u64 *rent_epoch;
    u8 is_signer;
    u8 is_writable;
    u8 executable;
} Acct;

/* Syscalls: the relinker turns each call into `call -1` plus a .rel.dyn entry against the name. */
extern void sol_log_(const char *message, u64 len);
extern void sol_log_data(const SolBytes *fields, u64 count);
extern u64 sol_get_clock_sysvar(Clock *clock);
extern u64 sol_get_rent_sysvar(Rent *rent);
extern u64 sol_try_find_program_address(const SolBytes *seeds, u64 seeds_len, const u8 *program_id, u8 *address,
                                        u8 *bump);
extern u64 sol_invoke_signed_c(const SolInstruction *instruction, const SolAccountInfo *account_infos,
                               u64 account_infos_len, const SolSignerSeeds *signers_seeds, u64 signers_seeds_len);

static inline u64 rd_u64(const u8 *p) {
    return (u64)p[0] | (u64)p[1] << 8 | (u64)p[2] << 16 | (u64)p[3] << 24 | (u64)p[4] << 32 | (u64)p[5] << 40 |
           (u64)p[6] << 48 | (u64)p[7] << 56;
}

static inline u32 rd_u32(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }

static inline u16 rd_u16(const u8 *p) { return (u16)(p[0] | p[1] << 8); }

static inline void wr_u64(u8 *p, u64 v) {
    for (int i = 0; i < 8; i++) p[i] = (u8)(v >> (8 * i));
}

static inline void wr_u32(u8 *p, u32 v) {
    for (int i = 0; i < 4; i++) p[i] = (u8)(v >> (8 * i));
}

static inline void wr_u16(u8 *p, u16 v) {
    p[0] = (u8)v;
    p[1] = (u8)(v >> 8);
}

static inline void copy_bytes(u8 *dst, const u8 *src, u64 n) {
    for (u64 i = 0; i < n; i++) dst[i] = src[i];
}

static inline void zero_bytes(u8 *dst, u64 n) {
    for (u64 i = 0; i < n; i++) dst[i] = 0;
}

static inline int bytes_eq(const u8 *a, const u8 *b, u64 n) {
    for (u64 i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static inline int is_zero32(const u8 *a) {
    for (int i = 0; i < 32; i++)
        if (a[i]) return 0;
    return 1;
}

static inline u64 sat_add(u64 a, u64 b) {
    u64 s = a + b;
    return s < a ? U64_MAX : s;
}

#endif
