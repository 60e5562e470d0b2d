import Hummingbird
import NIOCore

/// A request context that knows how an event stream it answers reaches the client, and the
/// channel it came on (whose close a held poll watches).
protocol EventStreamRequestContext: RequestContext {
    var eventStreamAttachment: EventStreamAttachment { get }
    var channel: any Channel { get }
}

/// Hummingbird's `BasicRequestContext`, plus how an event stream is attached: by its request's task
/// unless `EventStreamResponder` answers the request outside Hummingbird's loop.
struct OrderStatusRequestContext: EventStreamRequestContext {
    var coreContext: CoreRequestContextStorage
    let eventStreamAttachment: EventStreamAttachment
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        self.init(source: source, eventStreamAttachment: .requestTask(on: source.channel))
    }

    init(source: ApplicationRequestContextSource, eventStreamAttachment: EventStreamAttachment) {
        self.coreContext = .init(source: source)
        self.eventStreamAttachment = eventStreamAttachment
        self.channel = source.channel
    }
}
