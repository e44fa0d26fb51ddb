//! rampart-firewall's integration tests: rulesets applied with nft in network
//! namespaces the test creates.

mod netns;
