"""What the crypto_mining rule recognises: the JSON-RPC methods of mining protocols, which the sensor
names per flow (the only application data it ships), and the pools' domains and ports."""

from __future__ import annotations

# Index = the code a sensor stores per flow; 0 is "nothing recognised". Append only: codes never move.
RPC_METHODS: tuple[str, ...] = (
    "",
    "mining.subscribe", "mining.authorize", "mining.submit", "mining.notify", "mining.set_difficulty",
    "mining.set_target", "mining.extranonce.subscribe", "mining.configure",  # Stratum v1 (Bitcoin, Zcash, ...)
    "login", "job", "submit", "keepalived",  # Monero pools (xmrig, xmr-stak)
    "eth_submitLogin", "eth_getWork", "eth_submitWork", "eth_submitHashrate",  # Ethereum Stratum/getwork
    "getblocktemplate", "submitblock",  # solo mining against a node's RPC
    "getwork",  # Bitcoin getwork over HTTP (cgminer, bfgminer), before getblocktemplate
    "mining.get_transactions", "mining.suggest_difficulty", "mining.suggest_target", "mining.set_extranonce",
    "mining.ping",  # more Stratum v1 methods
)
RPC_CODES = {name: code for code, name in enumerate(RPC_METHODS) if name}

# Monero pool methods have generic names: each counts only next to a key its protocol always sends.
MONERO_KEYS: dict[str, tuple[bytes, ...]] = {
    "login": (b'"pass"', b'"agent"'),
    "job": (b'"blob"',),
    "submit": (b'"nonce"',),
    "keepalived": (b'"id"',),
}

# Ports mining pools listen on for Stratum; evidence, never a verdict alone (dev servers use them too).
POOL_PORTS = frozenset({
    1800, 2222, 3032, 3333, 3334, 3357, 4444, 5555, 6666, 7777, 8008, 8888, 9000, 9999, 10128, 10300,
    14433, 14444, 17777, 20535, 45560, 45700,
})

# Registered domains of public mining pools (and pool proxies). Matched on the registered domain of
# a DNS question, so every regional host (eu1.nanopool.org, xmr.2miners.com) is covered.
POOL_DOMAINS = frozenset({
    "2miners.com", "antpool.com", "btc.com", "c3pool.com", "ethermine.org", "f2pool.com", "flexpool.io",
    "flypool.org", "hashvault.pro", "herominers.com", "minergate.com", "minexmr.com", "miningpoolhub.com",
    "moneroocean.stream", "nanopool.org", "nicehash.com", "poolin.com", "prohashing.com", "slushpool.com",
    "braiins.com", "supportxmr.com", "unmineable.com", "viabtc.com", "xmrpool.eu", "zpool.ca",
    "zergpool.com", "kryptex.network", "woolypooly.com", "ezil.me", "hiveon.net", "binance-pool.com",
    "emcd.io", "luckpool.net", "dxpool.com", "sparkpool.com", "bitfufu.com", "mining-dutch.nl",
    # browser-mining services: a page's script mines through their WebSocket proxies, the Stratum hidden in
    # TLS, so their names are the evidence (the best known of the NoCoin block list)
    "coinhive.com", "coin-hive.com", "authedmine.com", "crypto-loot.com", "cryptoloot.pro", "coinimp.com",
    "webmine.cz", "jsecoin.com", "minero.cc", "ppoi.org", "webminepool.com",
})
