// A Flink session for the integration tests (tests/common/flink.rs drives it): one JVM, one
// Flink MiniCluster (a JobManager and a TaskManager in this process, REST on a free loopback
// port), Flink SQL jobs submitted to it through its REST API, controlled by commands read from
// stdin, one per line, and reported as events on stdout, one per line:
//
//   READY rest=http://127.0.0.1:PORT           the cluster is up
//   SUBMITTED <name> <jobId>                   the job was accepted
//   RUNNING <name> <jobId>                     every task of the job is RUNNING (again, after a restart)
//   STATUS <name> <JOB_STATUS> [cause]         the job's status changed (or: answer to `status`)
//   CHECKPOINT <name> <completed> <id> <path>  a checkpoint completed; `completed` counts them
//                                              (savepoints too) since submit
//   CHECKPOINTED <name> <path>                 answer to `checkpoint`
//   SAVEPOINT <name> <path>                    answer to `stop`
//   FINISHED|CANCELLED <name>                  the job ended so
//   FAILED <name> <root cause>                 the job ended failed
//   ERROR <name|-> <message>                   a command failed (the session goes on)
//
// Commands:
//   submit <name> <sql-file> [key=value ...]   runs the file's statements (CREATE ...; then one
//                                              INSERT or EXECUTE STATEMENT SET BEGIN ... END;) in a
//                                              new streaming TableEnvironment with that Flink
//                                              configuration; its one job runs on this cluster
//   stop <name> <savepoint-dir>                stop-with-savepoint (no drain)
//   cancel <name> | status <name> | checkpoint <name>
//   quit                                       (also: end of stdin) closes the cluster and exits
//
// A second mode, `dump`, is an independent reader of a Kafka topic (the Java kafka-clients,
// which share no code with slo-probe or librdkafka):
//   java FlinkSession dump <bootstrap> <topic> <partitions> <isolation.level> <sentinel> <timeout-ms>
// reads every partition from its beginning (assign(), no consumer group) and prints every
// record as one JSON line until each partition delivered a record whose value is the sentinel
// (not printed; nor anything after it on that partition). Exit 0 when every partition had its
// sentinel, 2 on timeout, naming the partitions without one.
//
// Plain Java 17, compiled by the tests with javac against the jars that .ci/run installs.

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

import org.apache.flink.api.common.JobID;
import org.apache.flink.api.common.JobStatus;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.RestOptions;
import org.apache.flink.configuration.TaskManagerOptions;
import org.apache.flink.core.execution.SavepointFormatType;
import org.apache.flink.runtime.checkpoint.CheckpointStatsSnapshot;
import org.apache.flink.runtime.checkpoint.CompletedCheckpointStats;
import org.apache.flink.runtime.execution.ExecutionState;
import org.apache.flink.runtime.executiongraph.ArchivedExecutionGraph;
import org.apache.flink.runtime.executiongraph.ArchivedExecutionVertex;
import org.apache.flink.runtime.executiongraph.ErrorInfo;
import org.apache.flink.runtime.minicluster.MiniCluster;
import org.apache.flink.runtime.minicluster.MiniClusterConfiguration;
import org.apache.flink.streaming.api.environment.RemoteStreamEnvironment;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.TableResult;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public final class FlinkSession {
    private static final PrintStream OUT =
            new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.out), true, StandardCharsets.UTF_8);
    private static MiniCluster cluster;
    private static int restPort;
    /** Jobs by the name the test gave them. */
    private static final Map<String, JobID> JOBS = new ConcurrentHashMap<>();
    /** How often a job's monitor asks the cluster for the job's state and checkpoints. */
    private static final long POLL_MS = 50;

    public static void main(String[] args) throws Exception {
        // Flink's and kafka-clients' own output goes to stderr (log4j2 config given by the tests):
        // stdout carries events only.
        System.setOut(new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.err), true));
        if (args.length > 0 && args[0].equals("dump")) {
            Runtime.getRuntime().halt(dump(args));
        }
        int slots = 8;
        Path workdir = null;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--slots" -> slots = Integer.parseInt(args[++i]);
                case "--workdir" -> workdir = Paths.get(args[++i]);
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        session(slots, workdir);
    }

    // ---------------------------------------------------------------- events

    private static synchronized void emit(String event) {
        OUT.println(event.replace('\r', ' ').replace('\n', ' '));
    }

    private static String oneLine(String s) {
        return s == null ? "" : s.replaceAll("\\s+", " ").trim();
    }

    /** "Class: message" of the deepest cause, then the outermost message if it differs. */
    private static String rootCause(Throwable t) {
        Throwable root = t;
        Set<Throwable> seen = new HashSet<>();
        while (root.getCause() != null && seen.add(root)) {
            root = root.getCause();
        }
        String text = describe(root);
        if (root != t) {
            text += " (outermost: " + describe(t) + ")";
        }
        return oneLine(text);
    }

    private static String describe(Throwable t) {
        String cls = t instanceof org.apache.flink.util.SerializedThrowable st
                ? st.getOriginalErrorClassName()
                : t.getClass().getName();
        return cls + ": " + t.getMessage();
    }

    // ---------------------------------------------------------------- session

    private static void session(int slots, Path workdir) throws Exception {
        Configuration conf = new Configuration();
        conf.set(RestOptions.BIND_ADDRESS, "127.0.0.1");
        conf.set(RestOptions.ADDRESS, "127.0.0.1");
        conf.set(RestOptions.BIND_PORT, "0"); // any free port; the actual one is reported
        conf.set(TaskManagerOptions.NUM_TASK_SLOTS, slots);
        MiniClusterConfiguration mcc = new MiniClusterConfiguration.Builder()
                .setConfiguration(conf)
                .setNumTaskManagers(1)
                .setNumSlotsPerTaskManager(slots)
                .build();
        cluster = new MiniCluster(mcc);
        cluster.start();
        java.net.URI rest = cluster.getRestAddress().get(60, TimeUnit.SECONDS);
        restPort = rest.getPort();
        emit("READY rest=http://127.0.0.1:" + restPort);

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            line = line.trim();
            if (line.isEmpty()) {
                continue;
            }
            if (line.equals("quit")) {
                break;
            }
            String[] words = line.split("\\s+");
            // each command on its own thread: a submit takes seconds, and the tests may issue
            // commands for several jobs at once
            Thread t = new Thread(() -> command(words), "command-" + words[0]);
            t.setDaemon(true);
            t.start();
        }
        // stdin closed (the test process ended) or `quit`: leave nothing behind
        try {
            cluster.closeAsync().get(15, TimeUnit.SECONDS);
        } catch (Exception e) {
            // exiting anyway
        }
        if (workdir != null) {
            deleteTree(workdir);
        }
        Runtime.getRuntime().halt(0);
    }

    private static void deleteTree(Path dir) {
        try (Stream<Path> walk = Files.walk(dir)) {
            walk.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        } catch (IOException e) {
            // best effort
        }
    }

    private static void command(String[] w) {
        String name = w.length > 1 ? w[1] : "-";
        try {
            switch (w[0]) {
                case "submit" -> {
                    need(w, 3, "submit <name> <sql-file> [key=value ...]");
                    Map<String, String> options = new LinkedHashMap<>();
                    for (int i = 3; i < w.length; i++) {
                        int eq = w[i].indexOf('=');
                        if (eq <= 0) {
                            throw new IllegalArgumentException("not key=value: " + w[i]);
                        }
                        options.put(w[i].substring(0, eq), w[i].substring(eq + 1));
                    }
                    submit(name, Paths.get(w[2]), options);
                }
                case "stop" -> {
                    need(w, 3, "stop <name> <savepoint-dir>");
                    String path = cluster
                            .stopWithSavepoint(job(name), w[2], false, SavepointFormatType.CANONICAL)
                            .get();
                    emit("SAVEPOINT " + name + " " + path);
                }
                case "cancel" -> {
                    need(w, 2, "cancel <name>");
                    cluster.cancelJob(job(name)).get();
                }
                case "status" -> {
                    need(w, 2, "status <name>");
                    emit("STATUS " + name + " " + cluster.getJobStatus(job(name)).get());
                }
                case "checkpoint" -> {
                    need(w, 2, "checkpoint <name>");
                    emit("CHECKPOINTED " + name + " " + cluster.triggerCheckpoint(job(name)).get());
                }
                default -> throw new IllegalArgumentException("unknown command " + w[0]);
            }
        } catch (Throwable e) {
            emit("ERROR " + name + " " + rootCause(e));
        }
    }

    private static void need(String[] w, int n, String usage) {
        if (w.length < n) {
            throw new IllegalArgumentException("usage: " + usage);
        }
    }

    private static JobID job(String name) {
        JobID id = JOBS.get(name);
        if (id == null) {
            throw new IllegalArgumentException("no job named " + name);
        }
        return id;
    }

    private static void submit(String name, Path sqlFile, Map<String, String> options) throws Exception {
        if (JOBS.containsKey(name)) {
            throw new IllegalArgumentException("a job named " + name + " exists already");
        }
        Configuration conf = Configuration.fromMap(options);
        // the jobs run on this JVM's cluster, sent to it through its REST API (an environment
        // created otherwise would start a MiniCluster of its own for every job)
        StreamExecutionEnvironment env = new RemoteStreamEnvironment("127.0.0.1", restPort, conf);
        EnvironmentSettings settings = EnvironmentSettings.newInstance()
                .inStreamingMode()
                .withConfiguration(conf)
                .build();
        StreamTableEnvironment tEnv = StreamTableEnvironment.create(env, settings);
        JobID id = null;
        for (String statement : statements(Files.readString(sqlFile))) {
            TableResult result = tEnv.executeSql(statement);
            if (result.getJobClient().isPresent()) {
                if (id != null) {
                    throw new IllegalArgumentException(
                            "a second statement started a job (use one EXECUTE STATEMENT SET)");
                }
                id = result.getJobClient().get().getJobID();
            }
        }
        if (id == null) {
            throw new IllegalArgumentException("no statement of " + sqlFile + " started a job");
        }
        JOBS.put(name, id);
        emit("SUBMITTED " + name + " " + id);
        monitor(name, id);
    }

    /**
     * The statements of a SQL file: each ends with a `;` at the end of a line; an `EXECUTE
     * STATEMENT SET BEGIN` ... `END;` block is one statement. Lines starting with `--` are
     * comments.
     */
    static List<String> statements(String text) {
        List<String> out = new ArrayList<>();
        StringBuilder current = new StringBuilder();
        boolean inSet = false;
        for (String raw : text.split("\n")) {
            String line = raw.strip();
            if (line.startsWith("--") || (line.isEmpty() && current.length() == 0)) {
                continue;
            }
            current.append(raw).append('\n');
            String upper = current.toString().strip().toUpperCase();
            if (!inSet && upper.matches("(?s)^(EXECUTE\\s+)?STATEMENT\\s+SET\\s+BEGIN.*")) {
                inSet = true;
            }
            boolean ends = inSet ? line.toUpperCase().matches("END\\s*;") : line.endsWith(";");
            if (ends) {
                String statement = current.toString().strip();
                out.add(statement.substring(0, statement.length() - 1).strip());
                current.setLength(0);
                inSet = false;
            }
        }
        if (!current.toString().isBlank()) {
            out.add(current.toString().strip());
        }
        return out;
    }

    /** Reports the job's changes until it ends: status, all tasks running, checkpoints. */
    private static void monitor(String name, JobID id) {
        Thread t = new Thread(() -> {
            JobStatus lastStatus = null;
            boolean wasRunning = false;
            long completed = 0;
            long lastId = -1;
            while (true) {
                ArchivedExecutionGraph g;
                try {
                    g = cluster.getArchivedExecutionGraph(id).get();
                } catch (Exception e) {
                    sleep(POLL_MS);
                    continue;
                }
                JobStatus status = g.getState();
                if (status != lastStatus) {
                    String cause = "";
                    ErrorInfo failure = g.getFailureInfo();
                    if (failure != null && (status == JobStatus.RESTARTING || status == JobStatus.FAILING
                            || status == JobStatus.FAILED)) {
                        cause = " " + rootCause(failure.getException());
                    }
                    if (!status.isGloballyTerminalState()) {
                        emit("STATUS " + name + " " + status + cause);
                    }
                    lastStatus = status;
                }
                CheckpointStatsSnapshot stats = g.getCheckpointStatsSnapshot();
                if (stats != null) {
                    CompletedCheckpointStats latest = stats.getHistory().getLatestCompletedCheckpoint();
                    long n = stats.getCounts().getNumberOfCompletedCheckpoints();
                    if (latest != null && (n > completed || latest.getCheckpointId() != lastId)) {
                        completed = n;
                        lastId = latest.getCheckpointId();
                        emit("CHECKPOINT " + name + " " + n + " " + lastId + " " + latest.getExternalPath());
                    }
                }
                boolean running = status == JobStatus.RUNNING && allRunning(g);
                if (running && !wasRunning) {
                    emit("RUNNING " + name + " " + id);
                }
                wasRunning = running;
                if (status.isGloballyTerminalState()) {
                    switch (status) {
                        case FINISHED -> emit("FINISHED " + name);
                        case CANCELED -> emit("CANCELLED " + name);
                        default -> {
                            ErrorInfo failure = g.getFailureInfo();
                            emit("FAILED " + name + " "
                                    + (failure == null ? status.toString() : rootCause(failure.getException())));
                        }
                    }
                    return;
                }
                sleep(POLL_MS);
            }
        }, "monitor-" + name);
        t.setDaemon(true);
        t.start();
    }

    private static boolean allRunning(ArchivedExecutionGraph g) {
        boolean any = false;
        for (ArchivedExecutionVertex v : g.getAllExecutionVertices()) {
            any = true;
            if (v.getExecutionState() != ExecutionState.RUNNING) {
                return false;
            }
        }
        return any;
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    // ---------------------------------------------------------------- dump

    private static int dump(String[] args) {
        if (args.length != 7) {
            System.err.println(
                    "usage: dump <bootstrap> <topic> <partitions> <isolation.level> <sentinel> <timeout-ms>");
            return 1;
        }
        String bootstrap = args[1];
        String topic = args[2];
        int partitions = Integer.parseInt(args[3]);
        String isolation = args[4];
        byte[] sentinel = args[5].getBytes(StandardCharsets.UTF_8);
        long deadline = System.currentTimeMillis() + Long.parseLong(args[6]);

        Map<String, Object> props = new LinkedHashMap<>();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation);
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.CLIENT_ID_CONFIG, "flink-tests-dump");
        props.put(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG, 100);
        List<TopicPartition> assigned = new ArrayList<>();
        for (int p = 0; p < partitions; p++) {
            assigned.add(new TopicPartition(topic, p));
        }
        Set<Integer> missing = new TreeSet<>();
        for (int p = 0; p < partitions; p++) {
            missing.add(p);
        }
        StringBuilder line = new StringBuilder();
        try (KafkaConsumer<byte[], byte[]> consumer =
                new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            consumer.assign(assigned);
            consumer.seekToBeginning(assigned);
            while (!missing.isEmpty()) {
                long left = deadline - System.currentTimeMillis();
                if (left <= 0) {
                    System.err.println("dump: timed out; no sentinel " + args[5] + " on partitions " + missing
                            + " of " + topic);
                    OUT.flush();
                    return 2;
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(Math.min(left, 500)))) {
                    if (!missing.contains(r.partition())) {
                        continue; // past this partition's sentinel
                    }
                    if (r.value() != null && java.util.Arrays.equals(r.value(), sentinel)) {
                        missing.remove(r.partition());
                        consumer.pause(List.of(new TopicPartition(topic, r.partition())));
                        continue;
                    }
                    line.setLength(0);
                    line.append("{\"partition\":").append(r.partition())
                            .append(",\"offset\":").append(r.offset())
                            .append(",\"timestamp\":").append(r.timestamp())
                            .append(",\"timestamp_type\":");
                    json(line, r.timestampType().name);
                    line.append(",\"key\":");
                    json(line, r.key());
                    line.append(",\"value\":");
                    json(line, r.value());
                    line.append(",\"headers\":[");
                    boolean first = true;
                    for (Header h : r.headers()) {
                        if (!first) {
                            line.append(',');
                        }
                        first = false;
                        line.append('[');
                        json(line, h.key());
                        line.append(',');
                        json(line, h.value());
                        line.append(']');
                    }
                    line.append("]}");
                    OUT.println(line);
                }
            }
        } catch (Exception e) {
            System.err.println("dump: " + rootCause(e));
            return 1;
        }
        OUT.flush();
        return 0;
    }

    private static void json(StringBuilder b, byte[] bytes) {
        if (bytes == null) {
            b.append("null");
        } else {
            json(b, new String(bytes, StandardCharsets.UTF_8));
        }
    }

    private static void json(StringBuilder b, String s) {
        if (s == null) {
            b.append("null");
            return;
        }
        b.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        b.append('"');
    }
}
