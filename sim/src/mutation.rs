//! Bugs planted on purpose, to show that the checkers catch them.

/// A bug planted on purpose, to show that a checker catches it. The client-side ones act while
/// the simulation runs (the broker is untouched); the trace ones rewrite a finished trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The subscriber's library loses some QoS 1 messages after acknowledging them.
    LoseQos1,
    /// The subscriber's application sees a QoS 2 message twice.
    DuplicateQos2,
    /// The will watcher never sees wills.
    SwallowWill,
    /// The simulated store (`sync = fsync`) reports records durable once written, before
    /// they are synced, and a crash keeps only what was synced: acknowledged work is lost.
    StoreAcksUnsynced,
    /// The subscriber's library ignores the topic aliases the broker sets (it never learns
    /// an alias's topic), so an alias-only PUBLISH reaches the application without a topic.
    ForgetServerAliases,
    /// The broker runs without its memory budget (`max_memory` set out of reach) while the
    /// checks hold it to the one the scenario chose.
    NoMemoryBudget,
    /// A prober's application misses some of its own QoS 1 messages.
    StarveProber,
    /// The simulated credential checker answers every check as a superuser's: the ACL is
    /// bypassed and denied publishes reach subscribers.
    AuthGrantsSuperuser,
}
