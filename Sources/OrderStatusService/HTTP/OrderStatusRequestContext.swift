import Foundation
import Hummingbird
import NIOCore

/// A request context that knows how an event stream it answers reaches the client, the channel
/// it came on (whose close a held poll watches), and when a stream it opens must end.
protocol EventStreamRequestContext: RequestContext {
    var eventStreamAttachment: EventStreamAttachment { get }
    var channel: any Channel { get }
    /// Set by `AuthorizationMiddleware`: the last instant the request's token is accepted (its
    /// `exp` plus the leeway), when the stream it authorizes ends. Nil with authorization off.
    var streamDeadline: Date? { get set }
}

/// Hummingbird's `BasicRequestContext`, plus how an event stream is attached: by its request's task
/// unless `EventStreamResponder` answers the request outside Hummingbird's loop.
struct OrderStatusRequestContext: EventStreamRequestContext {
    var coreContext: CoreRequestContextStorage
    let eventStreamAttachment: EventStreamAttachment
    let channel: any Channel
    var streamDeadline: Date?

    init(source: ApplicationRequestContextSource) {
        self.init(source: source, eventStreamAttachment: .requestTask(on: source.channel))
    }

    init(source: ApplicationRequestContextSource, eventStreamAttachment: EventStreamAttachment) {
        self.coreContext = .init(source: source)
        self.eventStreamAttachment = eventStreamAttachment
        self.channel = source.channel
    }
}
