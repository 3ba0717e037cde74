use super::*;

fn spec(service: &str) -> ChildSpec<'_> {
    ChildSpec {
        service,
        is_call: true,
        ..ChildSpec::default()
    }
}

#[test]
fn a_plain_root_makes_its_tree_on_first_use_already_charged() {
    let cfg = BudgetConfig {
        calls: 2,
        ..BudgetConfig::default()
    };
    let c = Contexts::new(cfg);
    let root = c.child(Parent::None, spec("a")).expect("root call");
    assert!(root.made_tree().is_none(), "a leaf root makes no tree");
    // The root's own call counts: root + one nested call = 2 calls.
    let child = c
        .child(Parent::Node(root.clone()), spec("b"))
        .expect("nested");
    assert!(Arc::ptr_eq(root.tree(), child.tree()), "one tree");
    let err = c
        .child(Parent::Node(root.clone()), spec("c"))
        .expect_err("a third call is over calls = 2");
    assert!(err.to_string().contains("calls"), "{err}");
    // A root with a budget header records it at once.
    let with_header = ChildSpec {
        budget_header: Some("calls=5"),
        ..spec("d")
    };
    let eager = c.child(Parent::None, with_header).expect("root call");
    assert!(eager.made_tree().is_some());
}

#[test]
fn paths_number_children_in_order() {
    let c = Contexts::new(BudgetConfig::default());
    let a = c.child(Parent::None, spec("a")).expect("root call");
    assert!(a.path().ends_with(".1"));
    let b1 = c.child(Parent::Node(a.clone()), spec("b")).expect("child");
    let b2 = c
        .child(Parent::Path(a.path().to_owned()), spec("b"))
        .expect("child by path");
    assert_eq!(b1.path(), format!("{}.1", a.path()));
    assert_eq!(b2.path(), format!("{}.2", a.path()));
    assert_eq!(b2.depth, 2);
    assert_eq!(c.tree(&a.root()).len(), 3);
    drop((b1, b2));
    assert_eq!(c.tree(&a.root()).len(), 1);
}

#[test]
fn cancel_kills_branch_only() {
    let c = Contexts::new(BudgetConfig::default());
    let a = c.child(Parent::None, spec("a")).expect("root");
    let b = c.child(Parent::Node(a.clone()), spec("b")).expect("b");
    let b1 = c.child(Parent::Node(b.clone()), spec("b1")).expect("b1");
    let s = c
        .child(Parent::Node(a.clone()), spec("s"))
        .expect("sibling");
    assert_eq!(c.cancel(b.path()), 2);
    assert!(b1.is_cancelled());
    assert!(!s.is_cancelled());
    assert!(!a.is_cancelled());
    assert!(b1.cancel_reason().message.contains("operator"));
}

#[test]
fn depth_budget_kills_parent_branch() {
    let cfg = BudgetConfig {
        depth: 2,
        ..BudgetConfig::default()
    };
    let c = Contexts::new(cfg);
    let a = c.child(Parent::None, spec("a")).expect("depth 1");
    let b = c
        .child(Parent::Node(a.clone()), spec("b"))
        .expect("depth 2");
    let err = c
        .child(Parent::Node(b.clone()), spec("c"))
        .expect_err("depth 3");
    assert!(err.to_string().contains("depth"), "{err}");
    assert!(b.is_cancelled());
    assert!(!a.is_cancelled());
}

#[test]
fn a_tree_is_findable_once_a_path_of_it_is_written_and_lists_every_member() {
    let c = Contexts::new(BudgetConfig::default());
    let a = c.child(Parent::None, spec("a")).expect("root");
    let b = c.child(Parent::Node(a.clone()), spec("b")).expect("b");
    // Nobody has seen a path yet: nothing can name this tree.
    assert_eq!(c.live_trees(), 0);
    assert!(c.tree(&a.root()).is_empty());
    // The root's path goes out (a header, an error, a span)...
    let path = a.path().to_owned();
    assert!(c.find(&path).is_some());
    // ...and the listing shows the unwritten child too, with its path.
    let listed: Vec<String> = c.tree(&a.root()).into_iter().map(|n| n.path).collect();
    assert_eq!(listed, vec![path.clone(), format!("{path}.1")]);
    assert!(c.find(b.path()).is_some());
    drop((a, b));
    assert_eq!(
        c.live_trees(),
        0,
        "the tree leaves the map with its last node"
    );
    assert!(c.find(&path).is_none());
}

#[tokio::test]
async fn waiters_below_a_cancelled_node_wake_and_siblings_do_not() {
    let c = Contexts::new(BudgetConfig::default());
    let a = c.child(Parent::None, spec("a")).expect("root");
    let b = c.child(Parent::Node(a.clone()), spec("b")).expect("b");
    let deep = c
        .child(Parent::Node(b.clone()), spec("deep"))
        .expect("deep");
    let sibling = c.child(Parent::Node(a.clone()), spec("s")).expect("s");
    let waiter = tokio::spawn({
        let deep = deep.clone();
        async move { deep.cancelled().await }
    });
    tokio::task::yield_now().await;
    b.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("woken")
        .expect("joined");
    assert!(deep.is_cancelled());
    assert!(!sibling.is_cancelled());
    let late = c
        .child(Parent::Node(b.clone()), spec("late"))
        .expect("late");
    assert!(
        late.is_cancelled(),
        "a child of a cancelled node starts cancelled"
    );
}
