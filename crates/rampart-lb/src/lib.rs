//! rampart's load balancer.
