"""localchain: the local stand-in for the Solana cluster (demo and tests), never used in production.

Modules (imported on demand: they pull in solders/LiteSVM):
    program/      the oracle-compatible C program, its built oracle.so and README
    build         deterministic build: clang-14 -> BPF object -> sbpf_link -> oracle.so (`--check` compares)
    sbpf_link     the pure relinker (BPF relocatable object -> sBPF v0 shared object)
    program_api   instruction builders for tests (admin and submit instructions)
    svm           LocalChain: LiteSVM with validator-like slots, blockhashes, history, persistence
    server        LocalChainServer: LocalChain behind a Solana JSON-RPC endpoint (aiohttp)
    cli           `gridmeter chain serve`
"""

__all__: list[str] = []  # nothing at package level: import the module you need (see above)
