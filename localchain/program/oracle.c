/* gridmeter local oracle: a stand-in for the GridTokenX oracle program (Anchor) for local runs and tests.
 *
 * Interface-compatible with the real program for the instructions below (same discriminators, Borsh
 * arguments, account order/writability, PDA seeds, account layouts, checks in the same order, custom
 * error codes 6000-6011, Anchor framework error codes for account validation, Anchor-style events).
 * It is NOT a replacement for the real program: see README.md for what is and is not implemented.
 *
 * Build: python -m localchain.build (clang-14 -target bpf -mcpu=v2, then the relinker in build.py).
 * Constraints of that path: no mutable globals, large scratch state in the heap region, 8-byte aligned
 * pointers for syscalls, no 32-bit ALU (mcpu v2), no signed division.
 */
#include "sbf.h"

/* ---- Anchor discriminators (sha256("global:<name>")[:8] read as little-endian u64) ---- */
#define IX_INITIALIZE 0xed9b980d1f6dafafULL
#define IX_SUBMIT_METER_READING 0xcec0584e8bc4f7b5ULL
#define IX_TRIGGER_MARKET_CLEARING 0x9f4e1c25a7a274b4ULL
#define IX_UPDATE_ORACLE_STATUS 0x3f5b7a357dc71211ULL
#define IX_UPDATE_API_GATEWAY 0x702aa87ff2fc4542ULL
#define IX_UPDATE_PRODUCTION_RATIO_CONFIG 0xab2bc6f78678f86cULL
#define IX_UPDATE_VALIDATION_CONFIG 0x2d4dd551ff8bec68ULL
#define IX_AGGREGATE_READINGS 0xc9fd53368e2d28eeULL

static const u8 DISC_ORACLE_DATA[8] = {0x1a, 0x83, 0x19, 0x6e, 0x06, 0x8d, 0x0a, 0x25};
static const u8 DISC_METER_STATE[8] = {0xed, 0x06, 0xd7, 0xae, 0xed, 0xd8, 0xe9, 0x03};
static const u8 EV_METER_READING_SUBMITTED[8] = {0x74, 0x17, 0xb4, 0x5b, 0xb4, 0xe3, 0xa0, 0x8d};
static const u8 EV_METER_READING_REJECTED[8] = {0x55, 0x77, 0x48, 0xb5, 0x1b, 0x14, 0xdb, 0xc2};
static const u8 EV_ORACLE_STATUS_UPDATED[8] = {0xa1, 0xb0, 0x62, 0x8d, 0xc9, 0x56, 0x4b, 0x7a};
static const u8 EV_API_GATEWAY_UPDATED[8] = {0x7a, 0x39, 0x12, 0x66, 0x62, 0x21, 0xd4, 0xab};
static const u8 EV_VALIDATION_CONFIG_UPDATED[8] = {0x7d, 0x8b, 0x9f, 0xc6, 0xa0, 0xda, 0x09, 0x7a};
static const u8 EV_PRODUCTION_RATIO_CONFIG_UPDATED[8] = {0xa5, 0xe3, 0x67, 0xd3, 0x8c, 0xf4, 0x60, 0x6c};
static const u8 EV_MARKET_CLEARING_TRIGGERED[8] = {0x54, 0xae, 0x94, 0x25, 0x04, 0x60, 0xde, 0x78};
static const u8 EV_READINGS_AGGREGATED[8] = {0x84, 0xb5, 0x97, 0x03, 0x0d, 0x55, 0x4c, 0x18};

static const u8 SEED_ORACLE_DATA[11] = {'o', 'r', 'a', 'c', 'l', 'e', '_', 'd', 'a', 't', 'a'};
static const u8 SEED_METER[5] = {'m', 'e', 't', 'e', 'r'};

/* ---- Account layouts ---- */
#define ORACLE_DATA_SIZE 176
#define METER_STATE_SIZE 102
#define MAX_METER_ID_LEN 32

/* OracleData: zero-copy repr(C); every field is naturally aligned inside 8-aligned account data. */
typedef struct {
    u8 discriminator[8];
    u8 authority[32];
    u8 chain_bridge[32];
    u64 total_readings;
    i64 last_reading_timestamp;
    i64 last_clearing;
    i64 created_at;
    u64 min_energy_value;
    u64 max_energy_value;
    u64 total_valid_readings;
    u64 total_rejected_readings;
    i64 quality_score_updated_at;
    u64 total_global_energy_produced;
    u64 total_global_energy_consumed;
    i64 last_cleared_epoch;
    u16 min_reading_interval;
    u16 max_production_consumption_ratio;
    u8 active;
    u8 anomaly_detection_enabled;
    u8 last_quality_score;
    u8 padding;
} OracleData;
_Static_assert(sizeof(OracleData) == ORACLE_DATA_SIZE, "OracleData is 176 bytes");

/* MeterState: Borsh (packed), so fields are read and written byte-wise at these offsets. */
#define MS_METER_ID 8
#define MS_METER_ID_LEN 40
#define MS_BUMP 41
#define MS_ZONE_ID 42
#define MS_ENERGY_PRODUCED 46
#define MS_ENERGY_CONSUMED 54
#define MS_TOTAL_PRODUCED 62
#define MS_TOTAL_CONSUMED 70
#define MS_LAST_READING_TS 78
#define MS_TOTAL_READINGS 86
#define MS_CREATED_AT 94

/* ---- initialize defaults (same as the real program) ---- */
#define DEFAULT_MAX_ENERGY 1000000ULL
#define DEFAULT_RATIO 1000     /* produced*100 <= ratio*consumed: 1000 = 10x */
#define DEFAULT_MIN_INTERVAL 60 /* seconds between readings of one meter */
#define DEFAULT_QUALITY 100
#define FUTURE_SKEW_S 60
#define EPOCH_LEN_S 900

/* ---- Errors ---- */
#define E_UNAUTHORIZED_AUTHORITY 6000
#define E_UNAUTHORIZED_GATEWAY 6001
#define E_ORACLE_INACTIVE 6002
#define E_ENERGY_OUT_OF_RANGE 6003
#define E_ANOMALOUS_READING 6004
#define E_OUTDATED_READING 6005
#define E_FUTURE_READING 6006
#define E_RATE_LIMIT 6007
#define E_INVALID_CONFIGURATION 6008
#define E_INVALID_EPOCH 6009
#define E_METER_ID_TOO_LONG 6010
#define E_AGGREGATOR_NOT_ADMITTED 6011

#define ANCHOR_MSG(code, name, text) \
    "AnchorError occurred. Error Code: " name ". Error Number: " #code ". Error Message: " text "."
#define ACCOUNT_MSG(account, code, name, text)                                                             \
    "AnchorError caused by account: " account ". Error Code: " name ". Error Number: " #code               \
    ". Error Message: " text "."
#define FAIL(code, name, text) fail(code, ANCHOR_MSG(code, name, text), sizeof(ANCHOR_MSG(code, name, text)) - 1)
#define FAIL_ACCOUNT(account, code, name, text) \
    fail(code, ACCOUNT_MSG(account, code, name, text), sizeof(ACCOUNT_MSG(account, code, name, text)) - 1)
#define LOG(text) sol_log_(text, sizeof(text) - 1)

#define ERR_NOT_ENOUGH_KEYS(acc) \
    FAIL_ACCOUNT(acc, 3005, "AccountNotEnoughKeys", "Not enough account keys given to the instruction")
#define ERR_DID_NOT_DESERIALIZE \
    FAIL(102, "InstructionDidNotDeserialize", "The program could not deserialize the given instruction")
#define ERR_CONSTRAINT_MUT(acc) FAIL_ACCOUNT(acc, 2000, "ConstraintMut", "A mut constraint was violated")
#define ERR_CONSTRAINT_SEEDS(acc) FAIL_ACCOUNT(acc, 2006, "ConstraintSeeds", "A seeds constraint was violated")
#define ERR_NOT_SIGNER(acc) FAIL_ACCOUNT(acc, 3010, "AccountNotSigner", "The given account did not sign")
#define ERR_SYSTEM_PROGRAM \
    FAIL_ACCOUNT("system_program", 3008, "InvalidProgramId", "Program ID was not as expected")

static u64 fail(u64 code, const char *message, u64 len) {
    sol_log_(message, len);
    return code;
}

/* ---- Scratch state: one struct at the start of the heap region ---- */
#define MAX_ACCOUNTS 8

typedef struct {
    Acct acc[MAX_ACCOUNTS];
    u64 n_accounts;
    const u8 *ix;
    u64 ix_len;
    const u8 *program_id;
    Clock clock;
    Rent rent;
    SolBytes seeds[3];
    SolSignerSeeds signer;
    SolAccountMeta metas[2];
    SolAccountInfo infos[2];
    SolInstruction cpi;
    SolBytes event_field;
    const u8 *meter_id; /* submit_meter_reading arguments, for the rejection event */
    u64 meter_id_len;
    const u8 *values;
    u8 pda[32];
    u8 bump[8];
    u8 system_program_id[32];
    u8 cpi_data[56];
    u8 event[160];
} Ctx;
_Static_assert(sizeof(Ctx) < 32 * 1024, "scratch fits the default heap");

/* Parse the serialized input (see sbpf-programs.md "Program input"). Accounts past MAX_ACCOUNTS are
 * walked but not recorded: no instruction here uses more than four. */
static void parse_input(Ctx *ctx, u8 *input) {
    u8 *p = input;
    u64 n = *(u64 *)p;
    p += 8;
    ctx->n_accounts = n;
    for (u64 i = 0; i < n; i++) {
        u8 dup = p[0];
        if (dup != 0xff) {
            if (i < MAX_ACCOUNTS && dup < MAX_ACCOUNTS) ctx->acc[i] = ctx->acc[dup];
            p += 8;
            continue;
        }
        Acct a;
        a.is_signer = p[1];
        a.is_writable = p[2];
        a.executable = p[3];
        p += 8;
        a.key = p;
        p += 32;
        a.owner = p;
        p += 32;
        a.lamports = (u64 *)p;
        p += 8;
        a.data_len = (u64 *)p;
        p += 8;
        a.data = p;
        p += *a.data_len + MAX_PERMITTED_DATA_INCREASE;
        p = (u8 *)(((u64)p + 7) & ~7ULL);
        a.rent_epoch = (u64 *)p;
        p += 8;
        if (i < MAX_ACCOUNTS) ctx->acc[i] = a;
    }
    ctx->ix_len = *(u64 *)p;
    p += 8;
    ctx->ix = p;
    ctx->program_id = p + ctx->ix_len;
}

/* ---- PDA helpers ---- */
static u64 find_pda(Ctx *ctx, u64 nseeds) {
    return sol_try_find_program_address(ctx->seeds, nseeds, ctx->program_id, ctx->pda, ctx->bump);
}

static void set_oracle_seeds(Ctx *ctx) {
    ctx->seeds[0].addr = SEED_ORACLE_DATA;
    ctx->seeds[0].len = sizeof(SEED_ORACLE_DATA);
}

static void set_meter_seeds(Ctx *ctx, const u8 *id, u64 id_len) {
    ctx->seeds[0].addr = SEED_METER;
    ctx->seeds[0].len = sizeof(SEED_METER);
    ctx->seeds[1].addr = id;
    ctx->seeds[1].len = id_len;
}

/* ---- Rent: (128 + space) * lamports_per_byte_year * exemption_threshold ----
 * The threshold is an f64 (2.0 before SIMD-0194, 1.0 after, with lamports_per_byte_year doubled). No floating
 * point here: a power-of-two threshold is applied as a shift (exact, as the f64 product is); any other value
 * falls back to the historical 2.0. */
static u64 rent_exempt_minimum(Ctx *ctx, u64 space) {
    u64 base = (128 + space) * ctx->rent.lamports_per_byte_year;
    u64 bits = ctx->rent.exemption_threshold_bits;
    u64 exp = (bits >> 52) & 0x7ff;
    if ((bits & 0x000fffffffffffffULL) == 0 && !(bits >> 63) && exp >= 1023 && exp <= 1023 + 4)
        return base << (exp - 1023);
    return base * 2;
}

/* ---- CPI to the system program, signed with ctx->seeds[0..nseeds] + bump ---- */
static void fill_info(SolAccountInfo *info, const Acct *a) {
    info->key = a->key;
    info->lamports = a->lamports;
    info->data_len = *a->data_len;
    info->data = a->data;
    info->owner = a->owner;
    info->rent_epoch = *a->rent_epoch;
    info->is_signer = a->is_signer;
    info->is_writable = a->is_writable;
    info->executable = a->executable;
}

static u64 system_cpi(Ctx *ctx, const Acct *from, const Acct *to, u64 data_len, u64 nseeds, int to_signs) {
    u64 n = 0;
    if (from) {
        ctx->metas[n].pubkey = from->key;
        ctx->metas[n].is_writable = 1;
        ctx->metas[n].is_signer = 1;
        fill_info(&ctx->infos[n], from);
        n++;
    }
    ctx->metas[n].pubkey = to->key;
    ctx->metas[n].is_writable = 1;
    ctx->metas[n].is_signer = (u8)to_signs;
    fill_info(&ctx->infos[n], to);
    n++;
    ctx->cpi.program_id = ctx->system_program_id;
    ctx->cpi.accounts = ctx->metas;
    ctx->cpi.account_len = n;
    ctx->cpi.data = ctx->cpi_data;
    ctx->cpi.data_len = data_len;
    ctx->seeds[nseeds].addr = ctx->bump;
    ctx->seeds[nseeds].len = 1;
    ctx->signer.addr = ctx->seeds;
    ctx->signer.len = nseeds + 1;
    return sol_invoke_signed_c(&ctx->cpi, ctx->infos, n, &ctx->signer, 1);
}

/* Anchor `init` of a PDA (payer pays rent, program becomes owner): create_account when the address holds
 * no lamports, else top up + allocate + assign. Seeds and bump must already be in ctx. */
static u64 init_pda(Ctx *ctx, const Acct *payer, const Acct *target, u64 space, u64 nseeds) {
    u64 rent = rent_exempt_minimum(ctx, space);
    u64 err;
    if (*target->lamports == 0) {
        wr_u32(ctx->cpi_data, 0); /* CreateAccount */
        wr_u64(ctx->cpi_data + 4, rent);
        wr_u64(ctx->cpi_data + 12, space);
        copy_bytes(ctx->cpi_data + 20, ctx->program_id, 32);
        return system_cpi(ctx, payer, target, 52, nseeds, 1);
    }
    if (bytes_eq(payer->key, target->key, 32))
        return FAIL(4101, "TryingToInitPayerAsProgramAccount",
                    "You cannot/should not initialize the payer account as a program account");
    u64 have = *target->lamports;
    u64 required = (rent > 1 ? rent : 1);
    required = required > have ? required - have : 0;
    if (required) {
        wr_u32(ctx->cpi_data, 2); /* Transfer */
        wr_u64(ctx->cpi_data + 4, required);
        err = system_cpi(ctx, payer, target, 12, nseeds, 0);
        if (err) return err;
    }
    wr_u32(ctx->cpi_data, 8); /* Allocate */
    wr_u64(ctx->cpi_data + 4, space);
    err = system_cpi(ctx, 0, target, 12, nseeds, 1);
    if (err) return err;
    wr_u32(ctx->cpi_data, 1); /* Assign */
    copy_bytes(ctx->cpi_data + 4, ctx->program_id, 32);
    return system_cpi(ctx, 0, target, 36, nseeds, 1);
}

/* ---- Events: sol_log_data(disc || borsh) -> "Program data: <base64>" ---- */
static void emit(Ctx *ctx, u64 len) {
    ctx->event_field.addr = ctx->event;
    ctx->event_field.len = len;
    sol_log_data(&ctx->event_field, 1);
}

static u64 put(u8 *dst, const u8 *src, u64 n) {
    copy_bytes(dst, src, n);
    return n;
}

/* ---- Account validation shared by the oracle_data-only instructions ---- */

/* AccountLoader<OracleData>: owner, discriminator, size. */
static u64 load_oracle_data(Ctx *ctx, u64 idx, OracleData **out) {
    const Acct *a = &ctx->acc[idx];
    if (!bytes_eq(a->owner, ctx->program_id, 32))
        return FAIL_ACCOUNT("oracle_data", 3007, "AccountOwnedByWrongProgram",
                            "The given account is owned by a different program than expected");
    if (*a->data_len < 8)
        return FAIL_ACCOUNT("oracle_data", 3001, "AccountDiscriminatorNotFound",
                            "No discriminator was found on the account");
    if (!bytes_eq(a->data, DISC_ORACLE_DATA, 8))
        return FAIL_ACCOUNT("oracle_data", 3002, "AccountDiscriminatorMismatch",
                            "Account discriminator did not match what was expected");
    if (*a->data_len < ORACLE_DATA_SIZE)
        return FAIL_ACCOUNT("oracle_data", 3003, "AccountDidNotDeserialize", "Failed to deserialize the account");
    *out = (OracleData *)a->data;
    return 0;
}

static u64 check_oracle_seeds(Ctx *ctx, u64 idx) {
    set_oracle_seeds(ctx);
    if (find_pda(ctx, 1) || !bytes_eq(ctx->pda, ctx->acc[idx].key, 32)) return ERR_CONSTRAINT_SEEDS("oracle_data");
    return 0;
}

/* Accounts of the admin/node instructions: oracle_data (W, PDA), authority (S). */
static u64 admin_accounts(Ctx *ctx, OracleData **od) {
    if (ctx->n_accounts < 1) return ERR_NOT_ENOUGH_KEYS("oracle_data");
    u64 err = load_oracle_data(ctx, 0, od);
    if (err) return err;
    if (ctx->n_accounts < 2) return ERR_NOT_ENOUGH_KEYS("authority");
    if (!ctx->acc[1].is_signer) return ERR_NOT_SIGNER("authority");
    if (!ctx->acc[0].is_writable) return ERR_CONSTRAINT_MUT("oracle_data");
    return check_oracle_seeds(ctx, 0);
}

static u64 require_admin(Ctx *ctx, const OracleData *od) {
    if (!bytes_eq(ctx->acc[1].key, od->authority, 32))
        return FAIL(6000, "UnauthorizedAuthority", "Unauthorized authority");
    return 0;
}

static i64 now(Ctx *ctx) {
    sol_get_clock_sysvar(&ctx->clock);
    return ctx->clock.unix_timestamp;
}

/* Borsh bool: exactly 0 or 1. */
static int read_bool(const u8 *p, u8 *out) {
    if (*p > 1) return 0;
    *out = *p;
    return 1;
}

/* Event with authority (32) + tail bytes already placed at ctx->event + 40. */
static void emit_authority_event(Ctx *ctx, const u8 *disc, u64 tail_len) {
    copy_bytes(ctx->event, disc, 8);
    copy_bytes(ctx->event + 8, ctx->acc[1].key, 32);
    emit(ctx, 40 + tail_len);
}

/* ---- initialize(chain_bridge: Pubkey) ----
 * accounts: oracle_data (W, PDA ["oracle_data"], created), authority (W, S, payer), system_program */
static u64 initialize(Ctx *ctx) {
    LOG("Instruction: Initialize");
    if (ctx->ix_len < 8 + 32) return ERR_DID_NOT_DESERIALIZE;
    const u8 *chain_bridge = ctx->ix + 8;
    if (ctx->n_accounts < 1) return ERR_NOT_ENOUGH_KEYS("oracle_data");
    if (ctx->n_accounts < 2) return ERR_NOT_ENOUGH_KEYS("authority");
    if (!ctx->acc[1].is_signer) return ERR_NOT_SIGNER("authority");
    if (ctx->n_accounts < 3) return ERR_NOT_ENOUGH_KEYS("system_program");
    if (!is_zero32(ctx->acc[2].key)) return ERR_SYSTEM_PROGRAM;

    Acct *oracle = &ctx->acc[0];
    set_oracle_seeds(ctx);
    if (find_pda(ctx, 1) || !bytes_eq(ctx->pda, oracle->key, 32)) return ERR_CONSTRAINT_SEEDS("oracle_data");
    sol_get_rent_sysvar(&ctx->rent);
    u64 err = init_pda(ctx, &ctx->acc[1], oracle, ORACLE_DATA_SIZE, 1);
    if (err) return err;
    if (!bytes_eq(oracle->owner, ctx->program_id, 32))
        return FAIL_ACCOUNT("oracle_data", 3007, "AccountOwnedByWrongProgram",
                            "The given account is owned by a different program than expected");
    if (!ctx->acc[1].is_writable) return ERR_CONSTRAINT_MUT("authority");
    if (*oracle->data_len < ORACLE_DATA_SIZE)
        return FAIL_ACCOUNT("oracle_data", 3003, "AccountDidNotDeserialize", "Failed to deserialize the account");
    for (int i = 0; i < 8; i++)
        if (oracle->data[i])
            return FAIL_ACCOUNT("oracle_data", 3000, "AccountDiscriminatorAlreadySet",
                                "The account discriminator was already set on this account");

    i64 t = now(ctx);
    OracleData *od = (OracleData *)oracle->data;
    zero_bytes(oracle->data, ORACLE_DATA_SIZE);
    copy_bytes(od->discriminator, DISC_ORACLE_DATA, 8);
    copy_bytes(od->authority, ctx->acc[1].key, 32);
    copy_bytes(od->chain_bridge, chain_bridge, 32);
    od->active = 1;
    od->created_at = t;
    od->min_energy_value = 0;
    od->max_energy_value = DEFAULT_MAX_ENERGY;
    od->anomaly_detection_enabled = 1;
    od->max_production_consumption_ratio = DEFAULT_RATIO;
    od->last_quality_score = DEFAULT_QUALITY;
    od->quality_score_updated_at = t;
    od->min_reading_interval = DEFAULT_MIN_INTERVAL;
    return 0;
}

/* ---- submit_meter_reading(meter_id: String, energy_produced: u64, energy_consumed: u64,
 *                            reading_timestamp: i64, zone_id: i32) ----
 * accounts: oracle_data (PDA, read-only), meter_state (W, PDA ["meter", meter_id], init_if_needed),
 *           authority (W, S, payer), system_program */

/* Rust's str::from_utf8 acceptance (no overlongs, no surrogates, <= U+10FFFF). */
static int utf8_valid(const u8 *s, u64 n) {
    u64 i = 0;
    while (i < n) {
        u8 c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        u64 need;
        u8 lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else {
            return 0;
        }
        if (n - i - 1 < need) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (u64 k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf) return 0;
        i += need + 1;
    }
    return 1;
}

/* Reading fields at ctx->event + 8: meter_id string, produced, consumed, timestamp, zone_id; returns length
 * written after the discriminator. */
static u64 put_reading(Ctx *ctx, const u8 *id, u64 id_len, const u8 *values28) {
    u8 *e = ctx->event + 8;
    wr_u32(e, (u32)id_len);
    u64 n = 4 + put(e + 4, id, id_len);
    n += put(e + n, values28, 28); /* produced u64, consumed u64, timestamp i64, zone_id i32 (as in ix data) */
    return n;
}

#define REJECT(code, name, text) (reject_event(ctx, name, sizeof(name) - 1), FAIL(code, name, text))

/* MeterReadingRejected {meter_id, energy_produced, energy_consumed, timestamp, zone_id, reason}, emitted just
 * before the validation error (the logs of the failed transaction keep it). reason is the error name (the real
 * program formats the error with {:?}). */
static void reject_event(Ctx *ctx, const char *name, u64 name_len) {
    copy_bytes(ctx->event, EV_METER_READING_REJECTED, 8);
    u64 n = 8 + put_reading(ctx, ctx->meter_id, ctx->meter_id_len, ctx->values);
    wr_u32(ctx->event + n, (u32)name_len);
    n += 4 + put(ctx->event + n + 4, (const u8 *)name, name_len);
    emit(ctx, n);
}

/* a * b for b < 2^32 without 128-bit arithmetic; returns 1 on u64 overflow (Rust checked_mul is None). */
static int mul_overflows(u64 a, u64 b, u64 *out) {
    u64 hi = (a >> 32) * b;
    u64 lo = (a & 0xffffffffULL) * b;
    if (hi >> 32) return 1;
    u64 r = (hi << 32) + lo;
    if (r < lo) return 1;
    *out = r;
    return 0;
}

static u64 submit_meter_reading(Ctx *ctx) {
    LOG("Instruction: SubmitMeterReading");
    /* Arguments (Borsh); trailing bytes are ignored like Anchor's deserialize. */
    if (ctx->ix_len < 12) return ERR_DID_NOT_DESERIALIZE;
    u64 id_len = rd_u32(ctx->ix + 8);
    if (ctx->ix_len < 12 + id_len + 28) return ERR_DID_NOT_DESERIALIZE;
    const u8 *id = ctx->ix + 12;
    if (!utf8_valid(id, id_len)) return ERR_DID_NOT_DESERIALIZE;
    const u8 *values = id + id_len;
    ctx->meter_id = id;
    ctx->meter_id_len = id_len;
    ctx->values = values;
    u64 produced = rd_u64(values);
    u64 consumed = rd_u64(values + 8);
    i64 ts = (i64)rd_u64(values + 16);
    u32 zone = rd_u32(values + 24);

    /* Accounts, in Anchor's order: typed fields first (init field skipped), then init, then constraints. */
    OracleData *od;
    if (ctx->n_accounts < 1) return ERR_NOT_ENOUGH_KEYS("oracle_data");
    u64 err = load_oracle_data(ctx, 0, &od);
    if (err) return err;
    if (ctx->n_accounts < 2) return ERR_NOT_ENOUGH_KEYS("meter_state");
    if (ctx->n_accounts < 3) return ERR_NOT_ENOUGH_KEYS("authority");
    Acct *auth = &ctx->acc[2];
    if (!auth->is_signer) return ERR_NOT_SIGNER("authority");
    if (ctx->n_accounts < 4) return ERR_NOT_ENOUGH_KEYS("system_program");
    if (!is_zero32(ctx->acc[3].key)) return ERR_SYSTEM_PROGRAM;

    /* meter_state: init_if_needed, seeds ["meter", meter_id]. A seed over 32 bytes makes the address
     * syscall abort the program (MaxSeedLengthExceeded), exactly like find_program_address in Anchor. */
    Acct *ms = &ctx->acc[1];
    set_meter_seeds(ctx, id, id_len);
    if (find_pda(ctx, 2) || !bytes_eq(ctx->pda, ms->key, 32)) return ERR_CONSTRAINT_SEEDS("meter_state");
    u8 meter_bump = ctx->bump[0];
    sol_get_rent_sysvar(&ctx->rent);
    if (is_zero32(ms->owner)) {
        err = init_pda(ctx, auth, ms, METER_STATE_SIZE, 2);
        if (err) return err;
    } else {
        if (!bytes_eq(ms->owner, ctx->program_id, 32))
            return FAIL_ACCOUNT("meter_state", 3007, "AccountOwnedByWrongProgram",
                                "The given account is owned by a different program than expected");
        if (*ms->data_len < 8)
            return FAIL_ACCOUNT("meter_state", 3001, "AccountDiscriminatorNotFound",
                                "No discriminator was found on the account");
        if (!bytes_eq(ms->data, DISC_METER_STATE, 8))
            return FAIL_ACCOUNT("meter_state", 3002, "AccountDiscriminatorMismatch",
                                "Account discriminator did not match what was expected");
        if (*ms->data_len < METER_STATE_SIZE)
            return FAIL_ACCOUNT("meter_state", 3003, "AccountDidNotDeserialize", "Failed to deserialize the account");
    }
    if (*ms->data_len != METER_STATE_SIZE)
        return FAIL_ACCOUNT("meter_state", 2019, "ConstraintSpace", "A space constraint was violated");
    if (!bytes_eq(ms->owner, ctx->program_id, 32))
        return FAIL_ACCOUNT("meter_state", 2004, "ConstraintOwner", "An owner constraint was violated");
    if (*ms->lamports < rent_exempt_minimum(ctx, METER_STATE_SIZE))
        return FAIL_ACCOUNT("meter_state", 2005, "ConstraintRentExempt", "A rent exemption constraint was violated");
    if (!ms->is_writable) return ERR_CONSTRAINT_MUT("meter_state");
    err = check_oracle_seeds(ctx, 0);
    if (err) return err;
    if (!auth->is_writable) return ERR_CONSTRAINT_MUT("authority");

    /* Handler checks, in the real program's order. */
    if (id_len > MAX_METER_ID_LEN) return FAIL(6010, "MeterIdTooLong", "Meter ID too long");
    if (od->active != 1) return FAIL(6002, "OracleInactive", "Oracle is inactive");
    if (!bytes_eq(auth->key, od->chain_bridge, 32))
        return FAIL(6001, "UnauthorizedGateway", "Unauthorized API Gateway");
    i64 t = now(ctx);
    if (ts > t + FUTURE_SKEW_S)
        return FAIL(6006, "FutureReading", "Reading timestamp is too far in the future");
    u8 *d = ms->data;
    u64 total_readings = rd_u64(d + MS_TOTAL_READINGS);
    if (total_readings > 0) {
        i64 last = (i64)rd_u64(d + MS_LAST_READING_TS);
        if (ts <= last) return FAIL(6005, "OutdatedReading", "Reading timestamp is older than last reading");
        i64 interval = (i64)od->min_reading_interval;
        i64 earliest = last > I64_MAX - interval ? I64_MAX : last + interval;
        if (ts < earliest) return FAIL(6007, "RateLimitExceeded", "Rate limit exceeded - readings too frequent");
    }
    if ((produced > 0 && produced < od->min_energy_value) || produced > od->max_energy_value ||
        (consumed > 0 && consumed < od->min_energy_value) || consumed > od->max_energy_value)
        return REJECT(6003, "EnergyValueOutOfRange", "Energy value out of range");
    if (od->anomaly_detection_enabled == 1 && consumed > 0) {
        u64 lhs, rhs;
        if (mul_overflows(produced, 100, &lhs) || mul_overflows(consumed, od->max_production_consumption_ratio, &rhs))
            return REJECT(6008, "InvalidConfiguration", "Invalid configuration parameter");
        if (lhs > rhs)
            return REJECT(6004, "AnomalousReading", "Anomalous reading detected");
    }

    /* Update the meter (Anchor serializes the whole account, discriminator included). */
    copy_bytes(d, DISC_METER_STATE, 8);
    if (total_readings == 0) {
        zero_bytes(d + MS_METER_ID, MAX_METER_ID_LEN);
        copy_bytes(d + MS_METER_ID, id, id_len);
        d[MS_METER_ID_LEN] = (u8)id_len;
        d[MS_BUMP] = meter_bump;
        wr_u64(d + MS_CREATED_AT, (u64)t);
    }
    wr_u32(d + MS_ZONE_ID, zone);
    wr_u64(d + MS_ENERGY_PRODUCED, produced);
    wr_u64(d + MS_ENERGY_CONSUMED, consumed);
    wr_u64(d + MS_TOTAL_PRODUCED, sat_add(rd_u64(d + MS_TOTAL_PRODUCED), produced));
    wr_u64(d + MS_TOTAL_CONSUMED, sat_add(rd_u64(d + MS_TOTAL_CONSUMED), consumed));
    wr_u64(d + MS_LAST_READING_TS, (u64)ts);
    wr_u64(d + MS_TOTAL_READINGS, sat_add(total_readings, 1));

    /* MeterReadingSubmitted {meter_id, energy_produced, energy_consumed, timestamp, zone_id, submitter} */
    copy_bytes(ctx->event, EV_METER_READING_SUBMITTED, 8);
    u64 n = 8 + put_reading(ctx, id, id_len, values);
    n += put(ctx->event + n, auth->key, 32);
    emit(ctx, n);
    return 0;
}

/* ---- update_oracle_status(active: bool) ---- */
static u64 update_oracle_status(Ctx *ctx) {
    LOG("Instruction: UpdateOracleStatus");
    u8 active;
    if (ctx->ix_len < 9 || !read_bool(ctx->ix + 8, &active)) return ERR_DID_NOT_DESERIALIZE;
    OracleData *od;
    u64 err = admin_accounts(ctx, &od);
    if (err) return err;
    err = require_admin(ctx, od);
    if (err) return err;
    od->active = active;
    i64 t = now(ctx);
    ctx->event[40] = active; /* OracleStatusUpdated {authority, active, timestamp} */
    wr_u64(ctx->event + 41, (u64)t);
    emit_authority_event(ctx, EV_ORACLE_STATUS_UPDATED, 9);
    return 0;
}

/* ---- update_api_gateway(new_api_gateway: Pubkey) -> writes chain_bridge ---- */
static u64 update_api_gateway(Ctx *ctx) {
    LOG("Instruction: UpdateApiGateway");
    if (ctx->ix_len < 8 + 32) return ERR_DID_NOT_DESERIALIZE;
    OracleData *od;
    u64 err = admin_accounts(ctx, &od);
    if (err) return err;
    err = require_admin(ctx, od);
    if (err) return err;
    copy_bytes(ctx->event + 40, od->chain_bridge, 32); /* ApiGatewayUpdated {authority, old, new, timestamp} */
    copy_bytes(od->chain_bridge, ctx->ix + 8, 32);
    copy_bytes(ctx->event + 72, ctx->ix + 8, 32);
    wr_u64(ctx->event + 104, (u64)now(ctx));
    emit_authority_event(ctx, EV_API_GATEWAY_UPDATED, 72);
    return 0;
}

/* ---- update_validation_config(min_energy_value: u64, max_energy_value: u64, anomaly_detection_enabled: bool) */
static u64 update_validation_config(Ctx *ctx) {
    LOG("Instruction: UpdateValidationConfig");
    u8 anomaly;
    if (ctx->ix_len < 8 + 17 || !read_bool(ctx->ix + 24, &anomaly)) return ERR_DID_NOT_DESERIALIZE;
    u64 min = rd_u64(ctx->ix + 8);
    u64 max = rd_u64(ctx->ix + 16);
    OracleData *od;
    u64 err = admin_accounts(ctx, &od);
    if (err) return err;
    err = require_admin(ctx, od);
    if (err) return err;
    if (min > max) return FAIL(6008, "InvalidConfiguration", "Invalid configuration parameter");
    od->min_energy_value = min;
    od->max_energy_value = max;
    od->anomaly_detection_enabled = anomaly;
    wr_u64(ctx->event + 40, (u64)now(ctx)); /* ValidationConfigUpdated {authority, timestamp} */
    emit_authority_event(ctx, EV_VALIDATION_CONFIG_UPDATED, 8);
    return 0;
}

/* ---- update_production_ratio_config(max_production_consumption_ratio: u16) ---- */
static u64 update_production_ratio_config(Ctx *ctx) {
    LOG("Instruction: UpdateProductionRatioConfig");
    if (ctx->ix_len < 8 + 2) return ERR_DID_NOT_DESERIALIZE;
    u16 ratio = rd_u16(ctx->ix + 8);
    OracleData *od;
    u64 err = admin_accounts(ctx, &od);
    if (err) return err;
    err = require_admin(ctx, od);
    if (err) return err;
    if (ratio == 0) return FAIL(6008, "InvalidConfiguration", "Invalid configuration parameter");
    od->max_production_consumption_ratio = ratio;
    wr_u16(ctx->event + 40, ratio); /* ProductionRatioConfigUpdated {authority, ratio, timestamp} */
    wr_u64(ctx->event + 42, (u64)now(ctx));
    emit_authority_event(ctx, EV_PRODUCTION_RATIO_CONFIG_UPDATED, 10);
    return 0;
}

/* Node callers (trigger_market_clearing, aggregate_readings): the chain bridge, or an aggregator admitted by
 * the governance program. This stand-in has no governance program: a passed aggregator_entry never admits. */
static u64 authorize_node_caller(Ctx *ctx, const OracleData *od) {
    if (bytes_eq(ctx->acc[1].key, od->chain_bridge, 32)) return 0;
    int has_entry = ctx->n_accounts >= 3 && !bytes_eq(ctx->acc[2].key, ctx->program_id, 32);
    if (has_entry) return FAIL(6011, "AggregatorNotAdmitted", "Aggregator not admitted");
    return FAIL(6001, "UnauthorizedGateway", "Unauthorized API Gateway");
}

/* ---- trigger_market_clearing(epoch_timestamp: i64) ---- */
static u64 trigger_market_clearing(Ctx *ctx) {
    LOG("Instruction: TriggerMarketClearing");
    if (ctx->ix_len < 8 + 8) return ERR_DID_NOT_DESERIALIZE;
    i64 epoch = (i64)rd_u64(ctx->ix + 8);
    OracleData *od;
    u64 err = admin_accounts(ctx, &od);
    if (err) return err;
    if (od->active != 1) return FAIL(6002, "OracleInactive", "Oracle is inactive");
    err = authorize_node_caller(ctx, od);
    if (err) return err;
    i64 t = now(ctx);
    /* epoch > last_cleared_epoch (>= 0), so epoch > 0 here and the modulo is unsigned. */
    if (epoch <= od->last_cleared_epoch || epoch > t || epoch <= 0 || ((u64)epoch % EPOCH_LEN_S) != 0)
        return FAIL(6009, "InvalidEpoch", "Invalid market epoch - must be greater than last cleared epoch");
    od->last_clearing = t;
    od->last_cleared_epoch = epoch;
    wr_u64(ctx->event + 40, (u64)t); /* MarketClearingTriggered {authority, timestamp, epoch_number} */
    wr_u64(ctx->event + 48, (u64)epoch);
    emit_authority_event(ctx, EV_MARKET_CLEARING_TRIGGERED, 16);
    return 0;
}

/* ---- aggregate_readings(total_produced, total_consumed, valid_count, rejected_count: u64) ---- */
static u64 aggregate_readings(Ctx *ctx) {
    LOG("Instruction: AggregateReadings");
    if (ctx->ix_len < 8 + 32) return ERR_DID_NOT_DESERIALIZE;
    OracleData *od;
    u64 err = admin_accounts(ctx, &od);
    if (err) return err;
    if (od->active != 1) return FAIL(6002, "OracleInactive", "Oracle is inactive");
    err = authorize_node_caller(ctx, od);
    if (err) return err;
    u64 produced = rd_u64(ctx->ix + 8), consumed = rd_u64(ctx->ix + 16);
    u64 valid = rd_u64(ctx->ix + 24), rejected = rd_u64(ctx->ix + 32);
    i64 t = now(ctx);
    od->total_global_energy_produced = sat_add(od->total_global_energy_produced, produced);
    od->total_global_energy_consumed = sat_add(od->total_global_energy_consumed, consumed);
    od->total_valid_readings = sat_add(od->total_valid_readings, valid);
    od->total_rejected_readings = sat_add(od->total_rejected_readings, rejected);
    od->total_readings = sat_add(sat_add(od->total_readings, valid), rejected);
    od->last_reading_timestamp = t;
    u64 total = sat_add(od->total_valid_readings, od->total_rejected_readings);
    if (total > 0) {
        u64 v = od->total_valid_readings;
        u64 pct = (v > U64_MAX / 100 ? U64_MAX : v * 100) / total;
        od->last_quality_score = (u8)(pct > 100 ? 100 : pct);
        od->quality_score_updated_at = t;
    }
    /* ReadingsAggregated {authority, total_produced, total_consumed, valid_count, rejected_count, timestamp} */
    copy_bytes(ctx->event + 40, ctx->ix + 8, 32);
    wr_u64(ctx->event + 72, (u64)t);
    emit_authority_event(ctx, EV_READINGS_AGGREGATED, 40);
    return 0;
}

u64 entrypoint(u8 *input) {
    Ctx *ctx = (Ctx *)HEAP_START;
    zero_bytes(ctx->system_program_id, 32);
    parse_input(ctx, input);
    if (ctx->ix_len < 8)
        return FAIL(100, "InstructionMissing", "8 byte instruction identifier not provided");
    switch (rd_u64(ctx->ix)) {
        case IX_SUBMIT_METER_READING:
            return submit_meter_reading(ctx);
        case IX_INITIALIZE:
            return initialize(ctx);
        case IX_UPDATE_ORACLE_STATUS:
            return update_oracle_status(ctx);
        case IX_UPDATE_API_GATEWAY:
            return update_api_gateway(ctx);
        case IX_UPDATE_VALIDATION_CONFIG:
            return update_validation_config(ctx);
        case IX_UPDATE_PRODUCTION_RATIO_CONFIG:
            return update_production_ratio_config(ctx);
        case IX_TRIGGER_MARKET_CLEARING:
            return trigger_market_clearing(ctx);
        case IX_AGGREGATE_READINGS:
            return aggregate_readings(ctx);
        default:
            return FAIL(101, "InstructionFallbackNotFound", "Fallback functions are not supported");
    }
}
